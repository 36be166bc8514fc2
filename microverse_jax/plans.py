"""A run's config resolved once, at start, into a frozen `Plan` that every module reads: the architectures (a
checkpoint's own config wins), the latent shape and length buckets, the steps and peak learning rate, the mesh
and the sharding rules. `resolve` checks the config against the devices and itself, naming the key at fault,
before anything is built or compiled.

  plan = plans.resolve(c, jax.device_count())      then   plan.dit, plan.latent_shape, plan.mesh_shape ...
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
from etils import epath

from microverse_jax import convert, diffusion, encoders, input_pipeline, sharding
from microverse_jax.models.umt5 import UMT5Config
from microverse_jax.models.wan_dit import WanDiTConfig
from microverse_jax.models.wan_vae import WanVAEConfig

# WanDiTConfig fields that say how to run the model, not what its weights are: a checkpoint's own config gives the rest.
RUN_FIELDS = ("dtype", "attention_impl", "remat_policy", "lora_rank", "lora_alpha", "lora_targets")


@dataclasses.dataclass(frozen=True)
class Plan:
  c: ml_collections.ConfigDict  # the config as given (never rewritten: what the plan resolves lives here)
  dit: WanDiTConfig
  vae: WanVAEConfig | None  # None in pixel space
  text: UMT5Config
  latent_shape: tuple[int, int, int, int]  # (F', H', W', C) the DiT sees at the data size
  frame_buckets: tuple[int, ...]  # data.frame_buckets, or the one bucket data.num_frames with several processes
  mesh_shape: sharding.MeshShape
  rules: tuple  # logical axis -> mesh axes (sharding.logical_rules)
  num_steps: int  # train.num_steps, or 0 until `with_train_records` resolves it from the split's size
  peak_lr: float  # optim.lr scaled from optim.reference_batch to data.batch_size (optim.lr_scaling)

  def latent_shape_of(self, num_frames=None, height=None, width=None) -> tuple[int, int, int, int]:
    """(F', H', W', C) for another video size (default: the data size)."""
    return latent_shape(self.c, self.vae, num_frames, height, width)

  def with_train_records(self, train_records: int) -> Plan:
    """The plan with num_steps from the train split when train.num_steps <= 0: train.num_epochs x
    ceil(train_records x data.dataset_repeat / data.batch_size), the official schedule."""
    if self.num_steps > 0:
      return self
    d = self.c.data
    return dataclasses.replace(
      self, num_steps=self.c.train.num_epochs * -(-train_records * d.dataset_repeat // d.batch_size)
    )


def resolve(c, num_devices: int, num_slices: int | None = None, num_processes: int = 1) -> Plan:
  """The config checked and resolved for `num_devices` devices over `num_processes` processes. num_slices: of a
  multislice run; None: the running devices' own count when they are the ones meant and span several slices,
  else the config's mesh.dcn_* product."""
  for key, path in (
    ("init_from", c.init_from),
    ("text.init_from", c.text.init_from),
    ("autoencoder.init_from", c.autoencoder.init_from),
  ):
    if path and not epath.Path(path).expanduser().exists():
      raise FileNotFoundError(f"{key}={path}: no such checkpoint")
  if num_slices is None and num_devices == jax.device_count():
    num_slices = sharding.slice_count(jax.devices()) if jax.device_count() > 1 else 1
    num_slices = num_slices if num_slices > 1 else None
  mesh = sharding.resolve_mesh_shape(c.mesh.to_dict(), num_devices, num_slices)
  _choice("autoencoder.kind", c.autoencoder.kind, ("pixel", "wan_vae"))
  _choice("data.source", c.data.source, ("video", "latents"))
  _choice("diffusion.prediction", c.diffusion.prediction, diffusion.PREDICTIONS)
  _choice("optim.schedule", c.optim.schedule, ("constant", "cosine"))
  _choice("train.on_nonfinite", c.train.on_nonfinite, ("stop", "skip"))
  _choice("optim.param_dtype", c.optim.param_dtype, ("float32", "bfloat16"))
  _choice("optim.lr_scaling", c.optim.lr_scaling, ("none", "linear", "sqrt"))
  if c.optim.reference_batch < 1:
    raise ValueError(f"optim.reference_batch={c.optim.reference_batch}: expected a batch >= 1")
  input_pipeline.bucket_sizes(c.data.num_frames, tuple(c.data.frame_buckets))  # names a bad list
  if c.train.num_steps <= 0 and c.train.num_epochs <= 0:
    raise ValueError(
      f"train.num_steps={c.train.num_steps}: give it, or train.num_epochs > 0 to compute it from the train split"
    )
  shards = mesh["data"] * mesh["fsdp"]
  micro, rem = divmod(c.data.batch_size, c.optim.grad_accum)
  if rem or micro % shards:
    raise ValueError(
      f"data.batch_size={c.data.batch_size} must split into optim.grad_accum="
      f"{c.optim.grad_accum} micro-batches divisible by the {shards} data shards "
      "(mesh.data x mesh.fsdp)"
    )
  if c.data.batch_size % num_processes:
    raise ValueError(f"data.batch_size={c.data.batch_size} is not divisible by {num_processes} processes")
  dit, vae = dit_config(c), vae_config(c)
  lat, mode = latent_shape(c, vae), diffusion.image_conditioning(c.diffusion)
  if diffusion.model_in_channels(mode, lat[-1], vae.temporal_factor if vae else 1) != dit.in_channels:
    raise ValueError(
      f"model.in_channels={dit.in_channels}, but the {c.autoencoder.kind} autoencoder gives {lat[-1]}"
      + ("" if mode == "none" else f" (diffusion.image_conditioning={mode!r})")
    )
  _check_image_conditioning(c, mode)
  _check_expert(c)
  if dit.num_heads % mesh["tensor"] or dit.num_heads % mesh["context"]:
    raise ValueError(f"model.num_heads={dit.num_heads} must divide by mesh.tensor and mesh.context")
  if c.train.caption_dropout and c.data.source != "video":
    raise ValueError("train.caption_dropout needs data.source='video' (a latent cache stores encoded captions)")
  ratio = c.data.batch_size / c.optim.reference_batch
  return Plan(
    c=c,
    dit=dit,
    vae=vae,
    text=text_config(c, dit),
    latent_shape=lat,
    frame_buckets=(c.data.num_frames,) if num_processes > 1 else tuple(c.data.frame_buckets),
    mesh_shape=mesh,
    rules=sharding.logical_rules(c.sharding_rules.to_dict()),
    num_steps=max(int(c.train.num_steps), 0),
    peak_lr=c.optim.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[c.optim.lr_scaling],
  )


def _check_image_conditioning(c, mode: str) -> None:
  """train.text_only_rate is a rate, read by "ti2v" only; "concat" needs the clip's first frame (data.source)."""
  rate = c.train.text_only_rate
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"train.text_only_rate={rate}: expected a fraction in [0, 1]")
  if rate and mode != "ti2v":
    raise ValueError(
      f"train.text_only_rate={rate} is read with diffusion.image_conditioning='ti2v' only (it is {mode!r})"
    )
  if mode == "concat" and c.data.source != "video":
    raise ValueError(
      f"data.source={c.data.source!r} with diffusion.image_conditioning='concat': the image latents encode the "
      "first frame followed by blank frames, which a latent cache does not hold; use data.source='video'"
    )


def check_trainable(c) -> None:
  """Refuses a two-expert pair (diffusion.boundary_ratio without train.expert: a config that samples both) as a
  training config: a run trains one expert."""
  if c.diffusion.boundary_ratio and not c.train.expert:
    raise ValueError(
      f"diffusion.boundary_ratio={c.diffusion.boundary_ratio} without train.expert: a two-expert pair samples; "
      "a run trains one expert (train.expert=high or low; configs/wan2_2.py:...,expert=high)"
    )


def _check_expert(c) -> None:
  """train.expert trains one of two experts (Wan2.2 A14B), split at diffusion.boundary_ratio; its range is not empty."""
  ratio, expert = c.diffusion.boundary_ratio, c.train.expert
  _choice("train.expert", expert, diffusion.EXPERTS)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"diffusion.boundary_ratio={ratio}: expected 0 (one model) or a ratio in (0, 1)")
  if expert and not ratio:
    raise ValueError(f"train.expert={expert!r} needs diffusion.boundary_ratio > 0 (where the two experts switch)")
  lo, hi = diffusion.FlowMatching.from_config(c.diffusion).expert_indices(ratio, expert)
  if lo >= hi:
    raise ValueError(
      f"train.expert={expert!r} with diffusion.boundary_ratio={ratio}: no timestep of the training grid "
      f"(diffusion.shift={c.diffusion.shift}) is the expert's"
    )


def _choice(key: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{key}={value!r}: expected one of {tuple(allowed)}")


# =============================================================================================
# Architectures: a checkpoint's own config, else the config's preset (random init only)
# =============================================================================================
def dit_config(c) -> WanDiTConfig:
  """The DiT of `c.init_from` (its saved architecture, with the config's run fields), else `c.model`."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.model.to_dict().items()}
  if not c.init_from:
    return WanDiTConfig(**fields)
  return dataclasses.replace(checkpoint_config(c.init_from, "dit"), **{k: fields[k] for k in RUN_FIELDS})


def vae_config(c) -> WanVAEConfig | None:
  """The Wan-VAE of `autoencoder.init_from`, else `autoencoder.preset`; None in pixel space."""
  if c.autoencoder.kind != "wan_vae":
    return None
  if c.autoencoder.init_from:
    return checkpoint_config(c.autoencoder.init_from, "vae")
  return WanVAEConfig.preset(c.autoencoder.preset)


def text_config(c, dit: WanDiTConfig) -> UMT5Config:
  """The umT5 of `text.init_from`, else `text.preset` (with the tokenizer's vocabulary and the DiT's text width
  for the offline tokenizers, encoders.OFFLINE_TOKENIZERS)."""
  if c.text.init_from:
    return checkpoint_config(c.text.init_from, "umt5")
  if c.text.tokenizer not in encoders.OFFLINE_TOKENIZERS:
    return UMT5Config.preset(c.text.preset)
  vocab_size = encoders.build_tokenizer(c).vocab_size
  return UMT5Config.preset(c.text.preset, vocab_size=vocab_size, d_model=dit.text_dim)


@functools.lru_cache(maxsize=32)
def checkpoint_config(path: str, kind: str):
  """A converted / PyTorch checkpoint's own model config (read once per path)."""
  return convert.checkpoint_config(path, kind)


def latent_shape(c, vae: WanVAEConfig | None, num_frames=None, height=None, width=None) -> tuple[int, int, int, int]:
  """(F', H', W', C) the DiT sees for a video size (default: the config's data size)."""
  f, h, w = num_frames or c.data.num_frames, height or c.data.height, width or c.data.width
  if vae is None:
    return f, h, w, 3
  t, s = vae.temporal_factor, vae.spatial_factor
  if (f - 1) % t or h % s or w % s:
    raise ValueError(
      f"frames/height/width = {f}/{h}/{w}: the Wan-VAE needs frames = 1 + {t}k "
      f"(4k + 1 for Wan2.1's VAE) and sizes divisible by {s}"
    )
  return 1 + (f - 1) // t, h // s, w // s, vae.z_dim
