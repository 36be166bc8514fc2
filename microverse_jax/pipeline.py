"""The Python API for text-to-video generation.

  from microverse_jax.pipeline import Pipeline, save_video
  pipe = Pipeline.from_workdir("workdir/tiny")              # or Pipeline.from_pretrained(converted_or_diffusers_dir)
  videos = pipe(["A cell divides into two."], steps=25, seed=0)   # list of uint8 (F, H, W, 3)
  save_video(videos[0], "cell.mp4", fps=8)
  videos = pipe("The cell divides.", image="first_frame.png")       # image-to-video (a TI2V or I2V model)

`generate` is the sampler under it (classifier-free guidance over the flow-matching ODE, then the
decoder), shared by the sample CLI and the trainer's evaluators.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from microverse_jax import diffusion, encoders as encoders_lib, files, plans, sharding, train_state, video


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
  images: np.ndarray | None = None,
  image_conditioning: str = "none",
  model_2=None,
  boundary: float | None = None,
  guidance_2: float | None = None,
) -> list[np.ndarray]:
  """Videos for `prompts` as uint8 (F, H, W, 3); `shape` is the latent (F', H', W', C) to sample
  (`plans.Plan.latent_shape_of`). Conditional and unconditional passes share a batch; guidance 1 runs
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
  `images`: uint8 (N, H, W, 3), prompt i's first frame at the video's size (`load_image`), taken as the model's
  `image_conditioning` says (diffusion.IMAGE_CONDITIONING; "concat" needs them, "none" refuses them).
  Two experts (Wan2.2 A14B): `model` samples timesteps t >= 1000 `boundary` (the folder's boundary_ratio) with
  `guidance`, `model_2` those below with `guidance_2` (default: `guidance`).
  """
  check_conditioning(image_conditioning, images is not None)
  if (model_2 is None) != (boundary is None) or (model_2 is None and guidance_2 is not None):
    raise ValueError("model_2, boundary and guidance_2 are for two experts: give model_2 with boundary")
  guidance_2 = guidance if guidance_2 is None else guidance_2
  batch_size = batch_size or jax.device_count()
  encode_text = nnx.jit(lambda enc, ids, mask: enc.text(ids, mask))
  velocity = nnx.jit(lambda m, x, t, ctx, extra, token_mask: _velocity(m, x, t, ctx, extra, token_mask, prediction))
  decode = nnx.jit(lambda enc, z: enc.decode(z, tiled=True) if tiled else enc.decode(z))
  if guidance != 1.0 or guidance_2 != 1.0:  # guidance 1 is the conditional velocity alone: no unconditional pass
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
    chunk_images = None if images is None else images[start : start + batch_size]
    extra, token_mask, first_frame = image_condition(encoders, chunk_images, shape, image_conditioning, model.cfg)

    def guide(m, scale, cond=cond, extra=extra, token_mask=token_mask):
      call = lambda x, t, ctx: velocity(m, x, t, ctx, extra, token_mask)
      if scale == 1.0:
        return lambda x, t: call(x, t, cond)
      context = jnp.concatenate([cond, jnp.broadcast_to(uncond, cond.shape)])
      cond_only = (lambda x, t: call(x, t, cond)) if cfg_cache else None
      return diffusion.guided(lambda x, t: call(x, t, context), scale, cond_only=cond_only)

    fn = guide(model, guidance)
    if model_2 is not None:
      fn = diffusion.switched(fn, guide(model_2, guidance_2), boundary * diffusion.NUM_TRAIN_TIMESTEPS)
    report = (lambda i: print(f"  step {i + 1}/{steps}", end="\r", flush=True)) if progress else None
    latents = diffusion.sample(
      fn, noise, steps, shift=shift, sampler=sampler, callback=report, step_cache=step_cache, first_frame=first_frame
    )
    frames = np.asarray(decode(encoders, latents))
    out.extend(np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8))
  return out


def _velocity(model, x, t, context, extra, token_mask, prediction: str):
  """The velocity at x (B', F', H', W', C), t (B',). extra: (B, F', H', W', E) channels concatenated to x, tiled
  over CFG's [cond; uncond]; token_mask (T,): the model's timestep per token is t times it (0: a clean token)."""
  x_in = x if extra is None else jnp.concatenate([x, jnp.tile(extra, (x.shape[0] // extra.shape[0], 1, 1, 1, 1))], -1)
  steps = t if token_mask is None else t[:, None] * token_mask
  out = model(x_in, steps, context)
  return diffusion.to_velocity(out, x, t / diffusion.NUM_TRAIN_TIMESTEPS, prediction)


_encode = nnx.jit(lambda enc, video: enc.encode(video))
_encode_first_frame = nnx.jit(lambda enc, video, n: enc.encode_first_frame(video, n), static_argnums=2)


def check_conditioning(mode: str, has_image: bool) -> None:
  """Refuses a conditioning image for a text-to-video model, and no image for a "concat" one: one line each."""
  if has_image and mode == "none":
    raise ValueError(
      "a conditioning image was given, but the model is text-to-video only "
      "(in_channels == out_channels, diffusion.image_conditioning='none')"
    )
  if not has_image and mode == "concat":
    raise ValueError(
      "diffusion.image_conditioning='concat': the model needs a conditioning image (image=, --image or first_frame)"
    )


def image_condition(encoders, images, shape, mode: str, dit_cfg) -> tuple:
  """(extra input channels, per-token timestep mask, held frame 0) for first frames `images` uint8 (B, H, W, 3) and
  a latent video `shape` (F', H', W', C); None where unused. "ti2v": frame 0's normalised latents (B, 1, H', W', C),
  held, timestep 0 on its tokens (T,). "concat": (B, F', H', W', t + C), a frame mask (1 on latent frame 0, t
  channels: the autoencoder's temporal factor) and the latents of the image followed by F - 1 zero frames."""
  if images is None:
    return None, None, None
  video = jnp.asarray(np.asarray(images), jnp.float32)[:, None] / 127.5 - 1.0
  if mode == "ti2v":
    return None, diffusion.first_frame_tokens(shape, dit_cfg.patch_size), _encode(encoders, video)
  latents = _encode_first_frame(encoders, video, shape[0])
  return diffusion.concat_condition(latents, encoders.temporal_factor), None, None


def load_image(image, height: int, width: int) -> np.ndarray:
  """uint8 (height, width, 3) from an image path or a uint8 (H, W, 3) array: resized to cover the size (Lanczos)
  and centre-cropped, as Wan2.2's image-to-video inference does; a note is printed when the size changes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  name = "image"
  if isinstance(image, (str, os.PathLike)):
    name = str(image)
    try:
      img = Image.open(io.BytesIO(epath.Path(image).expanduser().read_bytes())).convert("RGB")
    except OSError as e:  # a missing file, or not an image (PIL's UnidentifiedImageError)
      raise ValueError(f"{name}: not a readable image ({e})") from None
  else:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
      raise ValueError(f"image: expected uint8 (H, W, 3), got {array.dtype} {array.shape}")
    img = Image.fromarray(array)
  if img.size != (width, height):
    scale = max(width / img.width, height / img.height)
    size = (round(img.width * scale), round(img.height * scale))
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    print(f"{name}: {img.width}x{img.height} resized to {size[0]}x{size[1]}, centre-cropped to {width}x{height}")
    img = img.resize(size, Image.LANCZOS).crop((left, top, left + width, top + height))
  return np.asarray(img)


def folder_conditioning(folder: str, dit_cfg) -> str:
  """How the model of a diffusers Wan pipeline folder takes an image: "ti2v" when its model_index.json sets
  expand_timesteps (Wan2.2 TI2V-5B), "concat" when the transformer has more input than output channels (I2V)."""
  if _model_index(folder).get("expand_timesteps"):
    return "ti2v"
  return "concat" if dit_cfg.in_channels != dit_cfg.out_channels else "none"


def check_pipeline_parts(folder: str) -> None:
  """Refuses a folder with a WanPipeline's transformer/ or transformer_2/ but no model_index.json (an expert exported
  alone, into a new folder): one line saying how to put it beside its partner."""
  path = epath.Path(folder)
  experts = [p for p in ("transformer", "transformer_2") if (path / p).is_dir()]
  if experts and not (path / "model_index.json").exists():
    raise ValueError(
      f"{folder}: holds {' and '.join(f'{p}/' for p in experts)} but no model_index.json, not a WanPipeline folder: "
      f"export an expert into a copy of its pipeline folder (cp -rs PIPELINE {folder} first: docs/wan2_2.md), "
      "or give the transformer folder itself"
    )


def folder_boundary(folder: str) -> float | None:
  """The boundary_ratio of a two-expert diffusers Wan pipeline folder (Wan2.2 A14B: transformer/ samples timesteps
  >= 1000 boundary_ratio, transformer_2/ those below), None for one transformer; refuses one without transformer_2/."""
  check_pipeline_parts(folder)
  boundary = _model_index(folder).get("boundary_ratio")
  if boundary is not None and not (epath.Path(folder) / "transformer_2").is_dir():
    raise ValueError(f"{folder}: a two-expert Wan2.2 A14B pipeline (boundary_ratio) without transformer_2/")
  return boundary


def _model_index(folder: str) -> dict:
  """The folder's model_index.json, {} where absent."""
  path = epath.Path(folder) / "model_index.json"
  return json.loads(path.read_text()) if path.exists() else {}


def config_settings(c) -> dict:
  """`generate` keyword arguments from a run's config (sample.*, diffusion.*)."""
  return dict(
    steps=c.sample.steps,
    guidance=c.sample.guidance,
    shift=c.diffusion.shift,
    sampler=c.sample.sampler,
    negative_prompt=c.sample.negative_prompt,
    prediction=c.diffusion.prediction,
    same_noise=c.sample.same_noise,
    tiled=c.sample.tiled_decode,
    step_cache=c.sample.step_cache,
    cfg_cache=c.sample.cfg_cache,
    image_conditioning=diffusion.image_conditioning(c.diffusion),
  )


# Sampling settings that would silently give garbage: NaN guidance or a shift <= 0 (black frames), 0 steps (the noise
# itself), fps <= 0 (the encoder's 24). check_settings refuses them, naming each as the user gave it.
RULES = {
  "steps": (lambda v: v >= 1, "a whole number >= 1"),
  "guidance": (math.isfinite, "a finite number"),
  "guidance_2": (math.isfinite, "a finite number"),
  "shift": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
  "step_cache": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0: off)"),
  "fps": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
}
CONFIG_KEYS = {"steps": "sample.steps", "guidance": "sample.guidance", "shift": "diffusion.shift"}
CONFIG_KEYS.update(step_cache="sample.step_cache", fps="sample.fps")  # guidance_2: given only, never configured


def check_settings(settings: dict, c=None, prefix: str = "") -> None:
  """Raises ValueError on the first setting outside RULES, named `{prefix}{key}`; a setting absent from `settings`
  is checked as config `c` gives it, named by its config key."""
  for key, (ok, rule) in RULES.items():
    name, value = f"{prefix}{key}", settings.get(key)
    if value is None and c is not None and key in CONFIG_KEYS:
      section, _, field = CONFIG_KEYS[key].partition(".")
      name, value = CONFIG_KEYS[key], c[section][field]
    if value is not None and not ok(value):
      raise ValueError(f"{name}={value}: expected {rule}")


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


def pretrained_config(checkpoint: str, config=None):
  """`config` (default configs/base.py: Wan2.1 T2V-1.3B) pointed at `checkpoint`: its DiT, and for a diffusers
  WanPipeline folder its VAE, text encoder, tokenizer and image conditioning (`folder_conditioning`)."""
  if files.folder_kind(checkpoint) == "run":
    raise ValueError(f"--checkpoint={checkpoint}: {files.KINDS['run']}, not a checkpoint; give it as --workdir")
  check_pipeline_parts(checkpoint)
  if config is None:
    from microverse_jax import saved_config  # pylint: disable=g-import-not-at-top

    config = saved_config.base()
  config = copy.deepcopy(config)
  parts = {k: os.path.join(checkpoint, k) for k in ("transformer", "vae", "text_encoder", "tokenizer")}
  folder = all(epath.Path(p).is_dir() for p in parts.values())
  if folder:
    config.autoencoder.init_from, config.text.init_from = parts["vae"], parts["text_encoder"]
    config.text.tokenizer = parts["tokenizer"]
  config.init_from = parts["transformer"] if folder else checkpoint  # the DiT's architecture: the checkpoint's own
  if folder:
    config.diffusion.image_conditioning = folder_conditioning(checkpoint, plans.dit_config(config))
  return config


def check_same_shapes(model, model_2, folder: str) -> None:
  """Refuses two experts whose parameters differ in shape, naming the first key and both shapes (Wan2.2 A14B's
  experts share one architecture: the sampler feeds both the same latents and text)."""
  shapes = [
    {"/".join(map(str, k)): v.shape for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))} for m in (model, model_2)
  ]
  for key in sorted(shapes[0].keys() | shapes[1].keys()):
    a, b = (s.get(key, "absent") for s in shapes)
    if a != b:
      raise ValueError(
        f"{folder}: the experts differ at {key}: transformer/ {a}, transformer_2/ {b} (one architecture expected)"
      )


class Pipeline:
  """A DiT with its frozen encoders and its config's sampling settings: pipe(prompts) -> videos. Two experts
  (Wan2.2 A14B): `model_2` samples the timesteps below 1000 `boundary` (see `generate`)."""

  def __init__(self, plan, model, tokenizer, encoders, model_2=None, boundary: float | None = None):
    self.plan, self.config, self.model, self.tokenizer, self.encoders = plan, plan.c, model, tokenizer, encoders
    self.model_2, self.boundary = model_2, boundary

  @classmethod
  def from_workdir(cls, workdir: str, config=None) -> "Pipeline":
    """A training run's latest checkpoint (EMA weights when present) with the run's own config
    (WORKDIR/config.json) and encoders."""
    from microverse_jax import saved_config  # pylint: disable=g-import-not-at-top

    files.require_kind(workdir, ("run",), "--workdir")
    plan = plans.resolve(config or saved_config.get_config(workdir), jax.device_count())
    if expert := plan.c.train.expert:  # one Wan2.2 A14B expert: its partner is not in the run
      print(
        f"{workdir}: the {expert}-noise expert alone (train.expert={expert!r}) samples every step; export it "
        "(--format=diffusers) beside its partner in a WanPipeline folder to sample both (--checkpoint)",
        flush=True,
      )
    return cls.build(plan, train_state.load_dit(plan, workdir=workdir))

  @classmethod
  def from_pretrained(cls, checkpoint: str, config=None) -> "Pipeline":
    """A diffusers WanPipeline directory (transformer/, vae/, text_encoder/, tokenizer/: all four are
    used; how it takes an image, `folder_conditioning`; a two-expert folder's transformer_2/ too, `folder_boundary`),
    or a DiT checkpoint alone (converted, exported or PyTorch) with the encoders that `config` names (default
    configs/base.py, whose encoders are random unless its init_froms are set)."""
    plan = plans.resolve(pretrained_config(checkpoint, config), jax.device_count())
    pipe = cls.build(plan, train_state.load_dit(plan, checkpoint_dir=plan.c.init_from))
    pipe.boundary = folder_boundary(checkpoint)
    if pipe.boundary is not None:
      pipe.model_2 = train_state.load_dit(plan, checkpoint_dir=os.path.join(checkpoint, "transformer_2"))
      check_same_shapes(pipe.model, pipe.model_2, checkpoint)
      print(
        f"two experts: transformer/ samples timesteps >= {pipe.boundary * diffusion.NUM_TRAIN_TIMESTEPS:g}, "
        "transformer_2/ those below",
        flush=True,
      )
    return pipe

  @classmethod
  def build(cls, plan, model) -> "Pipeline":
    """A Pipeline around a DiT you already hold, with the encoders and settings of a `plans.Plan` (or a config)."""
    plan = plan if isinstance(plan, plans.Plan) else plans.resolve(plan, jax.device_count())
    tokenizer, encoders = encoders_lib.build_encoders(plan, sharding.make_mesh(plan.mesh_shape))
    return cls(plan, model, tokenizer, encoders)

  def __call__(
    self,
    prompts: list[str] | str,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 42,
    image=None,
    **settings,
  ) -> list[np.ndarray]:
    """uint8 videos (F, H, W, 3), one per prompt. `settings` override the config's: steps, guidance, guidance_2
    (two experts), shift, sampler, negative_prompt, batch_size, noise_ids, progress. `image`: the first frame to
    condition on (a path or uint8 (H, W, 3), fitted to the size by `load_image`), or a list of one per prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if self.model_2 is not None and settings.get("guidance_2") is None and self.config.sample.guidance_2:
      settings["guidance_2"] = self.config.sample.guidance_2
    check_settings(settings, self.config)
    check_conditioning(diffusion.image_conditioning(self.config.diffusion), image is not None)
    shape = self.plan.latent_shape_of(num_frames, height, width)
    images = None
    if image is not None:
      images = list(image) if isinstance(image, (list, tuple)) else [image] * len(prompts)
      if len(images) != len(prompts):
        raise ValueError(f"image: {len(images)} images for {len(prompts)} prompts (give one, or one per prompt)")
      size = (height or self.config.data.height, width or self.config.data.width)
      images = np.stack([load_image(im, *size) for im in images])
    return generate(
      self.model,
      self.encoders,
      self.tokenizer,
      prompts,
      shape,
      seed=seed,
      images=images,
      model_2=self.model_2,
      boundary=self.boundary,
      **{**config_settings(self.config), **settings},
    )
