"""Text-to-video generation: one prompt, or a whole MicroWorldBench task list, to mp4.

  python -m microverse_jax.sample --config=configs/FILE.py --workdir=DIR --prompt "..." --output out.mp4
  python -m microverse_jax.sample --config=... --workdir=DIR --tasks MWBenchRubrics.json --out_dir DIR [--indices 1-459]
  python -m microverse_jax.sample --config=... --workdir=DIR --prompts PROMPTS.jsonl --out_dir DIR [--split validation]

Steps, guidance, negative prompt, shift, sampler and fps default to the config's (eval.sample_steps,
eval.guidance, eval.negative_prompt, diffusion.shift, eval.sampler, eval.fps); configs/wan2_1.py holds
the official MicroVerse inference: 50 Euler steps, shift 5, CFG 5.0 with the official negative
prompt, 15 fps. Seed 42. Each video is written under a temporary name and renamed when
complete, so an interrupted run never leaves a truncated mp4; finished files are skipped on rerun.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import nnx
from ml_collections import config_flags

from microverse_jax import diffusion, video

NEGATIVE_PROMPT = ("overexposed, static, blurry details, subtitles, watermark, worst quality, low quality, "
                   "JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, poorly drawn face, "
                   "mutated, fused fingers, frozen frame, cluttered background")


def generate(model, encoders, tokenizer, prompts: list[str], shape: tuple[int, int, int, int], *,
             steps: int = 50, guidance: float = 5.0, shift: float = 5.0, sampler: str = "euler",
             seed: int = 42, negative_prompt: str = NEGATIVE_PROMPT, batch_size: int | None = None,
             noise_ids: list[int] | None = None, prediction: str = "velocity",
             progress: bool = False) -> list[np.ndarray]:
  """Videos for `prompts` as uint8 (F, H, W, 3); `shape` is the latent (F', H', W', C) to sample
  (`train.latent_shape`). Conditional and unconditional passes share a batch; guidance 1 runs only
  the conditional one.

  Prompt i gets the noise of key fold_in(key(seed), noise_ids[i]) (default i): results do not depend
  on batching, and a task keeps its noise when a run resumes.
  Prompts are batched `batch_size` at a time (default: the device count), data-parallel over devices.
  `prediction`: what the model outputs, "velocity" (Wan2.1) or "x0" (the config's diffusion.prediction).
  """
  batch_size = batch_size or jax.device_count()
  encode_text = nnx.jit(lambda enc, ids, mask: enc.text(ids, mask))
  velocity = nnx.jit(lambda m, x, t, ctx: diffusion.to_velocity(
      m(x, t, ctx), x, t / diffusion.NUM_TRAIN_TIMESTEPS, prediction))
  decode = nnx.jit(lambda enc, z: enc.decode(z))
  if guidance != 1.0:  # guidance 1 is the conditional velocity alone: no unconditional pass
    neg_ids, neg_mask = tokenizer([negative_prompt])
    uncond = encode_text(encoders, jnp.asarray(neg_ids), jnp.asarray(neg_mask))
  noise_ids = list(range(len(prompts))) if noise_ids is None else noise_ids
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    ids, mask = tokenizer(chunk)
    cond = encode_text(encoders, jnp.asarray(ids), jnp.asarray(mask))
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(seed), noise_ids[start + i]), shape)
                       for i in range(len(chunk))])
    if guidance == 1.0:
      fn = lambda x, t: velocity(model, x, t, cond)
    else:
      context = jnp.concatenate([cond, jnp.broadcast_to(uncond, cond.shape)])
      fn = diffusion.guided(lambda x, t: velocity(model, x, t, context), guidance)
    report = (lambda i: print(f"  step {i + 1}/{steps}", end="\r", flush=True)) if progress else None
    latents = diffusion.sample(fn, noise, steps, shift=shift, sampler=sampler, callback=report)
    frames = np.asarray(decode(encoders, latents))
    out.extend(np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8))
  return out


def write_video(frames: np.ndarray, path: str, *, fps: float = 15.0, strip: bool = False) -> None:
  """Writes uint8 (F, H, W, 3) to `path` atomically (temp name, then rename); optionally a PNG strip."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_bytes(video.encode_mp4(frames, fps))
  tmp.rename(path)
  if strip:
    import io
    from PIL import Image
    picks = np.linspace(0, len(frames) - 1, min(len(frames), 8)).round().astype(int)
    buffer = io.BytesIO()  # PIL cannot write gs:// paths; epath can
    Image.fromarray(np.concatenate(list(frames[picks]), axis=1)).save(buffer, format="PNG")
    path.with_suffix(".png").write_bytes(buffer.getvalue())


def parse_indices(spec: str, available: list[int]) -> list[int]:
  """"1-10,15" -> [1..10, 15]; every index must be a task in the file."""
  if not spec:
    return sorted(available)
  out = []
  for part in spec.split(","):
    lo, _, hi = part.partition("-")
    out.extend(range(int(lo), int(hi or lo) + 1))
  missing = sorted(set(out) - set(available))
  if missing:
    raise ValueError(f"--indices: tasks {missing[:10]} are not in the task file "
                     f"(it has {min(available)}..{max(available)})")
  return out


def load_prompts(path: str, split: str | None = None) -> list[tuple[str, str]]:
  """(id, caption) rows of a prompts JSONL (e.g. microsim_synth's --export_prompts), optionally one split."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if "id" not in row or not (row.get("caption") or row.get("prompt")):
        raise ValueError(f"{path}:{n}: a prompt row needs 'id' and 'caption' (or 'prompt')")
      if split is None or row.get("split") == split:
        rows.append((str(row["id"]), row.get("caption") or row["prompt"]))
  return rows


def load_tasks(path: str) -> dict[int, str]:
  """index -> prompt text of a MicroWorldBench rubric file (`task`/`requirement` or the norm variant)."""
  with open(path, encoding="utf-8") as f:
    rows = json.load(f)
  tasks = {}
  for row in rows:
    text = row.get("task") or row.get("任务") or ""
    if not text:
      raise ValueError(f"{path}: task {row.get('index')} has no task text")
    tasks[int(row["index"])] = text
  return tasks


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def load_model(c, workdir: str | None, checkpoint_dir: str | None):
  """The DiT with EMA weights when present, from a training workdir or a converted checkpoint."""
  from microverse_jax import checkpoint, convert, sharding, train
  mesh = sharding.make_mesh(train.validate(c, jax.device_count()))
  rules = sharding.logical_rules(c.sharding_rules.to_dict())
  factory = train.StateFactory(c, mesh, rules)
  if checkpoint_dir:
    model = train.WanDiT(factory.cfg, rngs=nnx.Rngs(0))
    convert.load_params(checkpoint_dir, model)
    return model
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoint in {ckpt.directory}")
  with jax.set_mesh(mesh):
    abstract_state, _ = factory.abstract()
    frozen = factory.create_frozen()
    state = ckpt.restore(step, abstract_state, None)
  logging.info("loaded step %d from %s", step, ckpt.directory)
  return nnx.merge(factory.graphdef, state.get("ema", state["params"]), frozen)


def config_settings(c) -> dict:
  """`generate` keyword arguments from a training config (eval.*, diffusion.*)."""
  return dict(steps=c.eval.sample_steps, guidance=c.eval.guidance, shift=c.diffusion.shift,
              sampler=c.eval.sampler, negative_prompt=c.eval.negative_prompt, prediction=c.diffusion.prediction)


def main(argv):
  del argv
  F = flags.FLAGS
  c = F.config
  if c is None or not (F.workdir or F.checkpoint):
    raise app.UsageError("--config and one of --workdir / --checkpoint are required")
  if sum(map(bool, (F.prompt, F.tasks, F.prompts))) != 1:
    raise app.UsageError("give exactly one of --prompt, --tasks or --prompts")
  if (F.tasks or F.prompts) and not F.out_dir:
    raise app.UsageError("--tasks and --prompts need --out_dir")
  from microverse_jax import train
  shape = train.latent_shape(c, F.num_frames, F.height, F.width)  # fails fast on a bad size
  if F.tasks:  # noise id = task index, so a resumed run reproduces the same videos
    tasks = load_tasks(F.tasks)
    items = [(i, tasks[i], f"{i}.mp4") for i in parse_indices(F.indices, list(tasks))]
  elif F.prompts:  # noise id = row number
    items = [(n, text, f"{row_id}.mp4") for n, (row_id, text) in enumerate(load_prompts(F.prompts, F.split))]
  else:
    items = [(0, F.prompt, None)]
  jobs = [(i, text, os.path.join(F.out_dir, name) if name else F.output) for i, text, name in items]
  jobs = [job for job in jobs if not (F.out_dir and os.path.exists(job[2]))]
  if F.out_dir:
    print(f"{len(jobs)} videos to generate ({F.out_dir})", flush=True)
  model = load_model(c, F.workdir, F.checkpoint)
  tokenizer, encoders = train.build_encoders(c)
  per = F.batch_size or jax.device_count()
  flagged = dict(steps=F.steps, guidance=F.guidance, shift=F.shift, sampler=F.sampler,
                 negative_prompt=F.negative_prompt)  # flags given on the command line win
  settings = {**config_settings(c), **{k: v for k, v in flagged.items() if v is not None}}
  for start in range(0, len(jobs), per):
    chunk = jobs[start:start + per]
    print(f"[{start + 1}-{start + len(chunk)}/{len(jobs)}] generating", flush=True)
    videos = generate(model, encoders, tokenizer, [t for _, t, _ in chunk], shape, seed=F.seed,
                      batch_size=per, noise_ids=[i for i, _, _ in chunk], progress=True, **settings)
    for frames, (_, _, path) in zip(videos, chunk):
      write_video(frames, path, fps=c.eval.fps if F.fps is None else F.fps)
      print(f"wrote {path}", flush=True)


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "The training config of the checkpoint.")
  flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint is used.")
  flags.DEFINE_string("checkpoint", None, "A converted DiT checkpoint (instead of --workdir).")
  flags.DEFINE_string("prompt", None, "One prompt.")
  flags.DEFINE_string("output", "out.mp4", "Output mp4 for --prompt.")
  flags.DEFINE_string("negative_prompt", None, "Negative prompt for CFG (default: the config's "
                      "eval.negative_prompt).")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: eval.sample_steps).")
  flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (default: eval.guidance).")
  flags.DEFINE_float("shift", None, "Sigma shift (default: diffusion.shift).")
  flags.DEFINE_integer("seed", 42, "Noise seed.")
  flags.DEFINE_enum("sampler", None, ["euler", "unipc"], "ODE sampler (default: eval.sampler).")
  flags.DEFINE_integer("num_frames", None, "Frames (default: the config's).")
  flags.DEFINE_integer("height", None, "Height (default: the config's).")
  flags.DEFINE_integer("width", None, "Width (default: the config's).")
  flags.DEFINE_float("fps", None, "Frames per second of the mp4 (default: eval.fps).")
  flags.DEFINE_string("tasks", None, "MicroWorldBench rubric file: one <index>.mp4 per task.")
  flags.DEFINE_string("out_dir", None, "Output directory for --tasks.")
  flags.DEFINE_string("indices", "", "Task indices for --tasks, e.g. 1-459 or 3,5-9.")
  flags.DEFINE_string("prompts", None, "Prompts JSONL (id, caption): one <id>.mp4 per row, e.g. for "
                      "`microworldbench physics`.")
  flags.DEFINE_string("split", None, "Only rows of this split from --prompts (e.g. validation).")
  flags.DEFINE_integer("batch_size", None, "Prompts per batch (default: device count).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
