"""Text-to-video generation to mp4: one prompt, a prompts JSONL, or a whole MicroWorldBench task list.

  python -m microverse_jax.sample --workdir=DIR --prompt="..." --out=out.mp4
  python -m microverse_jax.sample --workdir=DIR --rubrics=MWBenchRubrics.json --out=DIR [--indices=1-459]
  python -m microverse_jax.sample --workdir=DIR --prompts=PROMPTS.jsonl --out=DIR [--split=validation]
  python -m microverse_jax.sample --checkpoint=CONVERTED_OR_DIFFUSERS_DIR --config=configs/wan2_1.py ...
  python -m microverse_jax.sample --checkpoint=Wan2.2-TI2V-5B-Diffusers --config=... --image=FIRST.png --prompt="..."

A workdir describes itself: its saved config.json is the config (base and encoder weights
included); `--config.key=value` overrides it, `--config=FILE` replaces it. Steps, guidance,
negative prompt, shift, sampler and fps default to the config's (configs/wan2_1.py holds the
official MicroVerse inference: 50 Euler steps, shift 5, CFG 5.0 with the official negative prompt,
15 fps). Seed 42. Videos are written atomically; finished files are skipped on a rerun. A model that takes a
first frame (diffusion.image_conditioning) gets --image, or a prompts JSONL row's own `first_frame`.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from microverse_jax import cli, diffusion, files, pipeline, plans


class Job(NamedTuple):
  noise_id: int
  prompt: str
  image: str | np.ndarray | None  # the first frame: a path, or --image already loaded
  path: str  # the mp4 to write


def parse_indices(spec: str, available: list[int]) -> list[int]:
  """ "1-10,15" -> [1..10, 15]; every index must be a task in the file."""
  if not spec:
    return sorted(available)
  out = []
  for part in spec.split(","):
    lo, _, hi = part.partition("-")
    out.extend(range(int(lo), int(hi or lo) + 1))
  missing = sorted(set(out) - set(available))
  if missing:
    raise ValueError(
      f"--indices: tasks {missing[:10]} are not in the task file (it has {min(available)}..{max(available)})"
    )
  return out


def load_prompts(path: str, split: str | None = None) -> list[tuple[str, str, str | None]]:
  """(id, caption, first_frame) rows of a prompts JSONL (e.g. microsim_synth's --export_prompts), optionally
  one split. Ids become file names: they are checked (files.check_ids) before anything runs. `first_frame`: an
  image path, relative to the JSONL's folder, checked to exist; None where the row has none."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        raise ValueError(f"{path}:{n}: not a JSON line") from None
      if not isinstance(row, dict) or "id" not in row or not (row.get("caption") or row.get("prompt")):
        raise ValueError(f"{path}:{n}: a prompt row needs 'id' and 'caption' (or 'prompt')")
      caption = row.get("caption") or row["prompt"]
      if not isinstance(caption, str):
        raise ValueError(f"{path}:{n}: the caption is a {type(caption).__name__}, not text")
      if split is None or row.get("split") == split:
        rows.append((str(row["id"]), caption, _first_frame(row, path, n)))
  files.check_ids([row[0] for row in rows], what=f"prompt id in {path}")
  return rows


def _first_frame(row: dict, path: str, n: int) -> str | None:
  """A prompt row's `first_frame` image path, resolved against the JSONL's folder."""
  image = row.get("first_frame")
  if image is None:
    return None
  if not isinstance(image, str) or not image:
    raise ValueError(f"{path}:{n}: first_frame is {image!r}, not an image path")
  image = os.path.join(os.path.dirname(path), os.path.expanduser(image))
  if not os.path.isfile(image):
    raise ValueError(f"{path}:{n}: first_frame {image}: no such file")
  return image


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


def jobs_from_flags(F, image=None) -> list[Job]:
  """The videos still to make. `image`: the loaded --image, for a job whose row has no first_frame."""
  if sum(map(bool, (F.prompt, F.rubrics, F.prompts))) != 1:
    raise ValueError("give exactly one of --prompt, --rubrics or --prompts")
  if F.rubrics:  # noise id = task index, so a resumed run reproduces the same videos
    tasks = load_tasks(F.rubrics)
    items = [(i, tasks[i], None, f"{i}.mp4") for i in parse_indices(F.indices, list(tasks))]
  elif F.prompts:  # noise id = row number
    rows = load_prompts(F.prompts, F.split)
    items = [(n, text, first, f"{row_id}.mp4") for n, (row_id, text, first) in enumerate(rows)]
    bare = [row_id for row_id, _, first in rows if first is None]
    if image is None and 0 < len(bare) < len(rows):
      raise ValueError(f"{F.prompts}: rows {bare[:10]} have no first_frame but others do (give --image for them)")
  else:
    return [Job(0, F.prompt, image, F.out or "out.mp4")]
  if not F.out:
    raise ValueError("--rubrics and --prompts need --out (a folder)")
  jobs = [Job(i, text, image if first is None else first, os.path.join(F.out, name)) for i, text, first, name in items]
  return [job for job in jobs if not os.path.exists(job.path)]


def check_flags(F, c) -> None:
  """Refuses, before anything runs, a size or sampling value that would give no video, a black, noisy or mis-timed
  one (pipeline.RULES): one line naming the flag, or the config key the value comes from."""
  for name in ("num_frames", "height", "width", "batch_size"):
    if F[name].value is not None and F[name].value < 1:
      raise ValueError(f"--{name}={F[name].value}: expected a whole number >= 1")
  pipeline.check_settings({k: F[k].value for k in pipeline.RULES}, c, prefix="--")
  plans.latent_shape(c, plans.vae_config(c), F.num_frames, F.height, F.width)  # a size the autoencoder takes
  if F.guidance_2 is not None and (not F.checkpoint or pipeline.folder_boundary(F.checkpoint) is None):
    raise ValueError("--guidance_2: only for a two-expert (Wan2.2 A14B) diffusers folder given as --checkpoint")


def main(argv):
  del argv
  F = flags.FLAGS
  c = F.config
  if c is None or not (F.workdir or F.checkpoint):
    raise ValueError("give --workdir (its config.json is the config), or --checkpoint with --config")
  check_flags(F, c)
  image = pipeline.load_image(F.image, F.height or c.data.height, F.width or c.data.width) if F.image else None
  jobs = jobs_from_flags(F, image)
  print(f"{len(jobs)} videos to generate", flush=True)
  if not jobs:
    return
  model_config = pipeline.pretrained_config(F.checkpoint, c) if F.checkpoint else c  # a diffusers folder's own mode
  has_images = any(job.image is not None for job in jobs)
  pipeline.check_conditioning(diffusion.image_conditioning(model_config.diffusion), has_images)
  if F.workdir and not F.checkpoint:
    pipe = pipeline.Pipeline.from_workdir(F.workdir, config=c)
  else:
    pipe = pipeline.Pipeline.from_pretrained(F.checkpoint, config=c)
  per = F.batch_size or jax.device_count()
  flagged = dict(
    steps=F.steps,
    guidance=F.guidance,
    guidance_2=F.guidance_2,
    shift=F.shift,
    sampler=F.sampler,
    negative_prompt=F.negative_prompt,
    step_cache=F.step_cache,
    cfg_cache=F.cfg_cache,
  )  # flags given on the command line win
  settings = {k: v for k, v in flagged.items() if v is not None}
  chunks = [jobs[i : i + per] for i in range(0, len(jobs), per)]
  for chunk in cli.progress(chunks, len(chunks), f"generating {len(jobs)} videos, batches"):
    videos = pipe(
      [job.prompt for job in chunk],
      num_frames=F.num_frames,
      height=F.height,
      width=F.width,
      seed=F.seed,
      image=[job.image for job in chunk] if has_images else None,
      batch_size=per,
      noise_ids=[job.noise_id for job in chunk],
      **settings,
    )
    for frames, job in zip(videos, chunk):
      pipeline.save_video(frames, job.path, fps=c.sample.fps if F.fps is None else F.fps)
      print(f"wrote {job.path}", flush=True)


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config (default: the --workdir's saved config.json).")
  flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint and its config.")
  flags.DEFINE_string(
    "checkpoint",
    None,
    "A DiT checkpoint instead: converted, exported, diffusers or "
    "original Wan (a diffusers WanPipeline folder brings its encoders too).",
  )
  flags.DEFINE_string("prompt", None, "One prompt.")
  flags.DEFINE_string(
    "image",
    None,
    "First frame to condition on (a model with diffusion.image_conditioning 'ti2v' or 'concat'), for --prompt, "
    "every task, and the --prompts rows without a first_frame. Resized to cover the size and centre-cropped.",
  )
  flags.DEFINE_string(
    "out", None, "Output: the mp4 for --prompt (default out.mp4), a folder for --rubrics / --prompts."
  )
  flags.DEFINE_string("negative_prompt", None, "Negative prompt for CFG (default: sample.negative_prompt).")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: sample.steps).")
  flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (default: sample.guidance).")
  flags.DEFINE_float(
    "guidance_2", None, "Guidance of a two-expert (Wan2.2 A14B) folder's low-noise transformer_2 (default: --guidance)."
  )
  flags.DEFINE_float("shift", None, "Sigma shift (default: diffusion.shift).")
  flags.DEFINE_integer("seed", 42, "Noise seed.")
  flags.DEFINE_enum("sampler", None, ["euler", "unipc"], "ODE sampler (default: sample.sampler).")
  flags.DEFINE_integer("num_frames", None, "Frames (default: data.num_frames).")
  flags.DEFINE_integer("height", None, "Height (default: data.height).")
  flags.DEFINE_integer("width", None, "Width (default: data.width).")
  flags.DEFINE_float("fps", None, "Frames per second of the mp4 (default: sample.fps).")
  flags.DEFINE_string("rubrics", None, "MicroWorldBench rubric file (MWBenchRubrics.json): one <index>.mp4 per task.")
  flags.DEFINE_string("indices", "", "Task indices for --rubrics, e.g. 1-459 or 3,5-9 (default: all).")
  flags.DEFINE_string(
    "prompts",
    None,
    "Prompts JSONL (id, caption, optional first_frame image path): one <id>.mp4 per row, e.g. for "
    "`microworldbench physics`.",
  )
  flags.DEFINE_string("split", None, "Only rows of this split from --prompts (e.g. validation).")
  flags.DEFINE_integer("batch_size", None, "Prompts per batch (default: device count).")
  flags.DEFINE_float(
    "step_cache",
    None,
    "Reuse the last velocity while the input moved less than this "
    "relative L1 distance, e.g. 0.05 (default: sample.step_cache, 0 = off).",
  )
  flags.DEFINE_bool(
    "cfg_cache", None, "Run the unconditional pass every other step only (default: sample.cfg_cache, off)."
  )
  # Old spellings, kept for one release.
  flags.DEFINE_alias("output", "out")
  flags.DEFINE_alias("out_dir", "out")
  flags.DEFINE_alias("tasks", "rubrics")


if __name__ == "__main__":
  define_flags()
  cli.run(main, saved_config=True)
