"""The Python API for text-to-video generation.

  from microverse_jax.pipeline import Pipeline, save_video
  pipe = Pipeline.from_workdir("workdir/tiny")              # or Pipeline.from_pretrained(converted_or_diffusers_dir)
  videos = pipe(["A cell divides into two."], steps=25, seed=0)   # list of uint8 (F, H, W, 3)
  save_video(videos[0], "cell.mp4", fps=8)

`generate` is the sampler under it (classifier-free guidance over the flow-matching ODE, then the
decoder), shared by the sample CLI and the trainer's evaluators.
"""

from __future__ import annotations

import copy
import io
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from microverse_jax import diffusion, factory, files, sharding, video


def generate(
  model,
  encoders,
  tokenizer,
  prompts: list[str],
  shape: tuple[int, int, int, int],
  *,
  steps: int = 50,
  guidance: float = 5.0,
  shift: float = 5.0,
  sampler: str = "euler",
  seed: int = 42,
  negative_prompt: str = "",
  batch_size: int | None = None,
  noise_ids: list[int] | None = None,
  prediction: str = "velocity",
  progress: bool = False,
  same_noise: bool = False,
  tiled: bool = False,
  step_cache: float = 0.0,
  cfg_cache: bool = False,
) -> list[np.ndarray]:
  """Videos for `prompts` as uint8 (F, H, W, 3); `shape` is the latent (F', H', W', C) to sample
  (`factory.latent_shape`). Conditional and unconditional passes share a batch; guidance 1 runs
  only the conditional one.

  Prompt i gets the noise of key fold_in(key(seed), noise_ids[i]) (default i): results do not depend
  on batching, and a task keeps its noise when a run resumes. same_noise=True gives every prompt
  noise id 0 (the official inference.py: one seed for every prompt). tiled: Wan-VAE tiled decode.
  Prompts are batched `batch_size` at a time (default: the device count), data-parallel over devices.
  `prediction`: what the model outputs, "velocity" (Wan2.1) or "x0" (the config's diffusion.prediction).
  `negative_prompt`: the unconditional text of CFG (configs/wan2_1.py holds the official one).
  `step_cache` (> 0: reuse the last velocity while the input barely moved, see diffusion.sample) and
  `cfg_cache` (the unconditional pass every other step only, see diffusion.guided) trade accuracy
  for speed; both are off by default.
  """
  batch_size = batch_size or jax.device_count()
  encode_text = nnx.jit(lambda enc, ids, mask: enc.text(ids, mask))
  velocity = nnx.jit(
    lambda m, x, t, ctx: diffusion.to_velocity(m(x, t, ctx), x, t / diffusion.NUM_TRAIN_TIMESTEPS, prediction)
  )
  decode = nnx.jit(lambda enc, z: enc.decode(z, tiled=True) if tiled else enc.decode(z))
  if guidance != 1.0:  # guidance 1 is the conditional velocity alone: no unconditional pass
    neg_ids, neg_mask = tokenizer([negative_prompt])
    uncond = encode_text(encoders, jnp.asarray(neg_ids), jnp.asarray(neg_mask))
  noise_ids = list(range(len(prompts))) if noise_ids is None else noise_ids
  noise_ids = [0] * len(prompts) if same_noise else noise_ids
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start : start + batch_size]
    ids, mask = tokenizer(chunk)
    cond = encode_text(encoders, jnp.asarray(ids), jnp.asarray(mask))
    noise = jnp.stack(
      [
        jax.random.normal(jax.random.fold_in(jax.random.key(seed), noise_ids[start + i]), shape)
        for i in range(len(chunk))
      ]
    )
    if guidance == 1.0:
      fn = lambda x, t: velocity(model, x, t, cond)
    else:
      context = jnp.concatenate([cond, jnp.broadcast_to(uncond, cond.shape)])
      cond_only = (lambda x, t: velocity(model, x, t, cond)) if cfg_cache else None
      fn = diffusion.guided(lambda x, t: velocity(model, x, t, context), guidance, cond_only=cond_only)
    report = (lambda i: print(f"  step {i + 1}/{steps}", end="\r", flush=True)) if progress else None
    latents = diffusion.sample(fn, noise, steps, shift=shift, sampler=sampler, callback=report, step_cache=step_cache)
    frames = np.asarray(decode(encoders, latents))
    out.extend(np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8))
  return out


def config_settings(c) -> dict:
  """`generate` keyword arguments from a training config (eval.*, diffusion.*)."""
  return dict(
    steps=c.eval.sample_steps,
    guidance=c.eval.guidance,
    shift=c.diffusion.shift,
    sampler=c.eval.sampler,
    negative_prompt=c.eval.negative_prompt,
    prediction=c.diffusion.prediction,
    same_noise=c.eval.same_noise if "same_noise" in c.eval else False,
    tiled=c.eval.tiled_decode if "tiled_decode" in c.eval else False,
    step_cache=c.eval.step_cache if "step_cache" in c.eval else 0.0,
    cfg_cache=c.eval.cfg_cache if "cfg_cache" in c.eval else False,
  )


# Sampling settings that would silently give garbage: NaN guidance or a shift <= 0 (black frames), 0 steps (the noise
# itself), fps <= 0 (the encoder's 24). check_settings refuses them, naming each as the user gave it.
RULES = {
  "steps": (lambda v: v >= 1, "a whole number >= 1"),
  "guidance": (math.isfinite, "a finite number"),
  "shift": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
  "step_cache": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0: off)"),
  "fps": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
}
CONFIG_KEYS = {
  "steps": "eval.sample_steps",
  "guidance": "eval.guidance",
  "shift": "diffusion.shift",
  "step_cache": "eval.step_cache",
  "fps": "eval.fps",
}


def check_settings(settings: dict, c=None, prefix: str = "") -> None:
  """Raises ValueError on the first setting outside RULES, named `{prefix}{key}`; a setting absent from `settings`
  is checked as config `c` gives it, named by its config key."""
  for key, (ok, rule) in RULES.items():
    name, value = f"{prefix}{key}", settings.get(key)
    if value is None and c is not None:
      name, value = CONFIG_KEYS[key], _config_value(c, CONFIG_KEYS[key])
    if value is not None and not ok(value):
      raise ValueError(f"{name}={value}: expected {rule}")


def _config_value(c, key: str):
  """The value of dotted `key` in config `c`, None where absent."""
  for part in key.split("."):
    if part not in c:
      return None
    c = c[part]
  return c


def save_video(frames: np.ndarray, path: str, *, fps: float = 15.0, strip: bool = False) -> None:
  """Writes uint8 (F, H, W, 3) to `path` (mp4) atomically; `strip`: also a PNG of 8 frames beside it."""
  files.write_bytes(path, video.encode_mp4(frames, fps))
  if strip:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    buffer = io.BytesIO()  # PIL cannot write gs:// paths; epath can
    Image.fromarray(filmstrip(frames)).save(buffer, format="PNG")
    files.write_bytes(epath.Path(path).with_suffix(".png"), buffer.getvalue())


def filmstrip(frames: np.ndarray, count: int = 8) -> np.ndarray:
  """(H, count * W, 3): `count` evenly spaced frames side by side."""
  picks = np.linspace(0, len(frames) - 1, min(len(frames), count)).round().astype(int)
  return np.concatenate(list(frames[picks]), axis=1)


class Pipeline:
  """A DiT with its frozen encoders and its config's sampling settings: pipe(prompts) -> videos."""

  def __init__(self, c, model, tokenizer, encoders):
    self.config, self.model, self.tokenizer, self.encoders = c, model, tokenizer, encoders

  @classmethod
  def from_workdir(cls, workdir: str, config=None) -> "Pipeline":
    """A training run's latest checkpoint (EMA weights when present) with the run's own config
    (WORKDIR/config.json) and encoders."""
    from microverse_jax import saved_config  # pylint: disable=g-import-not-at-top

    files.require_kind(workdir, ("run",), "--workdir")
    c = config or saved_config.get_config(workdir)
    return cls.build(c, factory.load_dit(c, workdir=workdir))

  @classmethod
  def from_pretrained(cls, checkpoint: str, config=None) -> "Pipeline":
    """A diffusers WanPipeline directory (transformer/, vae/, text_encoder/, tokenizer/: all four are
    used), or a DiT checkpoint alone (converted, exported or PyTorch) with the encoders that
    `config` names (default configs/wan2_1.py, whose encoders are random unless its init_froms are set)."""
    if files.folder_kind(checkpoint) == "run":
      raise ValueError(f"--checkpoint={checkpoint}: {files.KINDS['run']}, not a checkpoint; give it as --workdir")
    if config is None:
      from microverse_jax.configs import wan2_1  # pylint: disable=g-import-not-at-top

      config = wan2_1.get_config("1.3b,full")
    parts = {k: os.path.join(checkpoint, k) for k in ("transformer", "vae", "text_encoder", "tokenizer")}
    if all(epath.Path(p).is_dir() for p in parts.values()):
      config = copy.deepcopy(config)
      config.autoencoder.init_from, config.text.init_from = parts["vae"], parts["text_encoder"]
      config.text.tokenizer, checkpoint = parts["tokenizer"], parts["transformer"]
    config = copy.deepcopy(config)
    config.init_from = checkpoint  # the DiT's architecture (validation, latent shape): the checkpoint's own
    return cls.build(config, factory.load_dit(config, checkpoint_dir=checkpoint))

  @classmethod
  def build(cls, c, model) -> "Pipeline":
    """A Pipeline around a DiT you already hold, with the encoders and settings of config `c`."""
    mesh = sharding.make_mesh(factory.validate(c, jax.device_count()))
    tokenizer, encoders = factory.build_encoders(c, mesh, sharding.logical_rules(c.sharding_rules.to_dict()))
    return cls(c, model, tokenizer, encoders)

  def __call__(
    self,
    prompts: list[str] | str,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 42,
    **settings,
  ) -> list[np.ndarray]:
    """uint8 videos (F, H, W, 3), one per prompt. `settings` override the config's: steps,
    guidance, shift, sampler, negative_prompt, batch_size, noise_ids, progress."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    check_settings(settings, self.config)
    shape = factory.latent_shape(self.config, num_frames, height, width)
    return generate(
      self.model,
      self.encoders,
      self.tokenizer,
      prompts,
      shape,
      seed=seed,
      **{**config_settings(self.config), **settings},
    )
