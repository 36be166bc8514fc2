"""Config -> objects, shared by train, sample, export, encode and aot: validation, the DiT and the
frozen encoders (architecture from a checkpoint's own config), the optimizer, the sharded train
state, and the batches. Everything is created directly into its sharding, never as a host copy.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import operator
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from microverse_jax import checkpoint, convert, diffusion, input_pipeline, latent_cache, sharding
from microverse_jax.models.umt5 import UMT5Config, UMT5Encoder, UMT5Tokenizer
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig
from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig

# WanDiTConfig fields that say how to run the model, not what its weights are: a checkpoint's own
# config gives the rest.
RUN_FIELDS = ("dtype", "attention_impl", "remat_policy", "lora_rank", "lora_alpha", "lora_targets")


# =============================================================================================
# Architectures: a checkpoint's own config, else the config's preset (random init only)
# =============================================================================================
def dit_config(c: ml_collections.ConfigDict) -> WanDiTConfig:
  """The DiT of `c.init_from` (its saved architecture, with the config's run fields), else `c.model`."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.model.to_dict().items()}
  if not c.init_from:
    return WanDiTConfig(**fields)
  return dataclasses.replace(_checkpoint_config(c.init_from, "dit"), **{k: fields[k] for k in RUN_FIELDS})


def vae_config(c) -> WanVAEConfig | None:
  """The Wan-VAE of `autoencoder.init_from`, else `autoencoder.preset`; None in pixel space."""
  if c.autoencoder.kind != "wan_vae":
    return None
  if c.autoencoder.init_from:
    return _checkpoint_config(c.autoencoder.init_from, "vae")
  return WanVAEConfig.preset(c.autoencoder.preset)


def text_config(c) -> UMT5Config:
  """The umT5 of `text.init_from`, else `text.preset` (with the tokenizer's vocabulary and the DiT's
  text width for the offline tokenizers, OFFLINE_TOKENIZERS)."""
  if c.text.init_from:
    return _checkpoint_config(c.text.init_from, "umt5")
  if c.text.tokenizer not in OFFLINE_TOKENIZERS:
    return UMT5Config.preset(c.text.preset)
  vocab_size = build_tokenizer(c).vocab_size
  return UMT5Config.preset(c.text.preset, vocab_size=vocab_size, d_model=dit_config(c).text_dim)


@functools.lru_cache(maxsize=32)
def _checkpoint_config(path: str, kind: str):
  return convert.checkpoint_config(path, kind)


def latent_shape(c, num_frames=None, height=None, width=None) -> tuple[int, int, int, int]:
  """(F', H', W', C) the DiT sees for a video size (default: the config's data size)."""
  f, h, w = num_frames or c.data.num_frames, height or c.data.height, width or c.data.width
  vae = vae_config(c)
  if vae is None:
    return f, h, w, 3
  t, s = vae.temporal_factor, vae.spatial_factor
  if (f - 1) % t or h % s or w % s:
    raise ValueError(
      f"frames/height/width = {f}/{h}/{w}: the Wan-VAE needs frames = 1 + {t}k "
      f"(4k + 1 for Wan2.1's VAE) and sizes divisible by {s}"
    )
  return 1 + (f - 1) // t, h // s, w // s, vae.z_dim


# =============================================================================================
# Validation: before anything is compiled, naming the key at fault
# =============================================================================================
def _choice(key: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{key}={value!r}: expected one of {tuple(allowed)}")


def validate(c, num_devices: int, num_slices: int | None = None) -> dict[str, int]:
  """Checks the config against the devices and itself; returns the resolved mesh shape (global axes,
  with the slice split in `.dcn`). num_slices: of a multislice run; None: the running devices' own
  count when they are the ones meant and span several slices, else the config's mesh.dcn_* product."""
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
  if jax.process_count() > 1 and jax.process_index() == 0:
    print(
      f"{jax.process_count()} processes: one length bucket ({c.data.num_frames} frames); shorter clips "
      "are skipped and counted (docs/recipe.md)",
      flush=True,
    )
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
  if c.data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={c.data.batch_size} is not divisible by {jax.process_count()} processes")
  cfg = dit_config(c)
  lat, mode, vae = latent_shape(c), diffusion.image_conditioning(c.diffusion), vae_config(c)
  if diffusion.model_in_channels(mode, lat[-1], vae.temporal_factor if vae else 1) != cfg.in_channels:
    raise ValueError(
      f"model.in_channels={cfg.in_channels}, but the {c.autoencoder.kind} autoencoder gives {lat[-1]}"
      + ("" if mode == "none" else f" (diffusion.image_conditioning={mode!r})")
    )
  if cfg.num_heads % mesh["tensor"] or cfg.num_heads % mesh["context"]:
    raise ValueError(f"model.num_heads={cfg.num_heads} must divide by mesh.tensor and mesh.context")
  if c.train.caption_dropout and c.data.source != "video":
    raise ValueError("train.caption_dropout needs data.source='video' (a latent cache stores encoded captions)")
  return mesh


# =============================================================================================
# Frozen encoders: text (umT5) and video (pixel space or Wan-VAE), restored into their shardings
# =============================================================================================
class Encoders(nnx.Module):
  """Frozen text encoder and autoencoder. text(ids (B,L), mask) -> (B, L, D); encode/decode video."""

  def __init__(self, text_encoder: UMT5Encoder, vae: WanVAE | None):
    self.text_encoder = text_encoder
    self.vae = vae  # set once: nnx fixes an attribute's kind (data or static) at its first assignment

  def text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def encode(self, video):
    """video (B, F, H, W, 3) in [-1, 1] -> latents (B, F', H', W', C), normalised."""
    return video if self.vae is None else self.vae.normalize_latents(self.vae.encode(video))

  def decode(self, latents, tiled: bool = False):
    """tiled: the Wan-VAE decodes overlapping spatial tiles one after another (bounded memory)."""
    return latents if self.vae is None else self.vae.decode(self.vae.denormalize_latents(latents), tiled=tiled)


def shardings_of(state: nnx.State, mesh, rules) -> dict:
  """Pure-dict tree of NamedShardings from each variable's logical axis names. A dimension that
  its mesh axes do not divide (e.g. a 259-token byte vocabulary over tensor=2) is replicated."""
  out: dict = {}
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get("out_sharding") or (None,) * var.ndim
    spec = sharding.logical_to_spec(names, rules)
    spec = P(*(axes if _divides(mesh, axes, dim) else None for axes, dim in zip(spec, var.shape)))
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(mesh, spec)
  return out


def _divides(mesh, axes, dim: int) -> bool:
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return dim % size == 0


def frozen_module(cls, cfg, *, init_from: str, kind: str, seed: int, mesh, rules, name: str, dtype=None):
  """`cls(cfg)` with weights restored from `init_from` (converted or PyTorch) straight into their
  shardings, floating-point ones as `dtype` if given, or a seeded random init made sharded (said on
  stdout: never silently random). The one loader of frozen models: training, sampling and encoding."""
  abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(seed)))
  graphdef, state = nnx.split(abstract)
  shard = shardings_of(state, mesh, rules)
  if init_from:

    def leaf(s, sh):
      floating = dtype is not None and jnp.issubdtype(s.dtype, jnp.floating)
      return jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype) if floating else s.dtype, sharding=sh)

    target = jax.tree.map(leaf, state.to_pure_dict(), shard)
    pure = convert.restore_params(init_from, target, kind=kind)
  else:
    print(f"{name}: seeded random weights (seed {seed}); set its init_from for real ones", flush=True)
    pure = jax.jit(lambda: nnx.state(cls(cfg, rngs=nnx.Rngs(seed))).to_pure_dict(), out_shardings=shard)()
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


# text.tokenizer values that need no tokenizer files, by name -> "module:class" (a class taking max_length):
# UTF-8 bytes, and the procedural captions read back into process and parameter tokens (docs/physics.md).
OFFLINE_TOKENIZERS = {
  "bytes": "microverse_jax.input_pipeline:ByteTokenizer",
  "microsim_params": "microverse_jax.datasets.microsim_synth.conditioning:ParamTokenizer",
}


def build_tokenizer(c):
  """text.tokenizer: a name in OFFLINE_TOKENIZERS, or a sentencepiece / tokenizer.json path."""
  if c.text.tokenizer in OFFLINE_TOKENIZERS:
    module, _, name = OFFLINE_TOKENIZERS[c.text.tokenizer].partition(":")
    return getattr(importlib.import_module(module), name)(c.text.max_length)
  return UMT5Tokenizer(c.text.tokenizer, max_length=c.text.max_length)


def build_encoders(c, mesh, rules) -> tuple[object, Encoders]:
  """(tokenizer, Encoders): umT5 sharded by the rules (embed over fsdp, heads/mlp over tensor), the
  VAE replicated; weights from text.init_from / autoencoder.init_from, else seeded random."""
  if text_config(c).d_model != dit_config(c).text_dim:  # before any weights load
    raise ValueError(f"model.text_dim={dit_config(c).text_dim}, but the text encoder gives {text_config(c).d_model}")
  seed = c.train.seed + 1
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    text = frozen_module(
      UMT5Encoder,
      text_config(c),
      init_from=c.text.init_from,
      kind="umt5",
      seed=seed,
      mesh=mesh,
      rules=rules,
      name="text encoder",
    )
    vae_cfg = vae_config(c)
    vae = (
      None
      if vae_cfg is None
      else frozen_module(
        WanVAE,
        vae_cfg,
        init_from=c.autoencoder.init_from,
        kind="vae",
        seed=seed,
        mesh=mesh,
        rules=rules,
        name="Wan-VAE",
      )
    )
  return build_tokenizer(c), Encoders(text, vae)


def abstract_encoders(c, mesh, rules) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, state of ShapeDtypeStructs with shardings) of the encoders, for AOT compiles."""
  seed = c.train.seed + 1
  vae_cfg = vae_config(c)
  enc = nnx.eval_shape(
    lambda: Encoders(
      UMT5Encoder(text_config(c), rngs=nnx.Rngs(seed)),
      None if vae_cfg is None else WanVAE(vae_cfg, rngs=nnx.Rngs(seed)),
    )
  )
  graphdef, state = nnx.split(enc)
  shard = shardings_of(state, mesh, rules)
  pure = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state.to_pure_dict(), shard)
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state


# =============================================================================================
# Train state: trainable params (all, or LoRA only), optimizer, EMA, step, RNG, skipped updates
# =============================================================================================
def trainable_filter(cfg: WanDiTConfig):
  return nnx.LoRAParam if cfg.lora_rank else nnx.Param


def scaled_lr(c) -> float:
  """optim.lr scaled from optim.reference_batch to data.batch_size: "linear" lr * B / B_ref, "sqrt"
  lr * sqrt(B / B_ref) (the rule for Adam-type optimizers), "none" lr unchanged."""
  ratio = c.data.batch_size / c.optim.reference_batch
  return c.optim.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[c.optim.lr_scaling]


def frame_buckets(c) -> tuple[int, ...]:
  """data.frame_buckets (empty: every 4k + 1 from 5 to data.num_frames; see input_pipeline.bucket_sizes).

  With several JAX processes each one buckets its own shard, so one step's per-process batches could
  differ in shape: there the single bucket data.num_frames is used (short clips skipped, counted)."""
  if jax.process_count() > 1:
    return (c.data.num_frames,)
  return tuple(c.data.frame_buckets)


def resolve_num_steps(c, train_records: int) -> int:
  """train.num_steps, or when it is <= 0: train.num_epochs x ceil(train_records x data.dataset_repeat /
  data.batch_size), the official schedule (an epoch is dataset_repeat passes over the train split)."""
  if c.train.num_steps > 0:
    return int(c.train.num_steps)
  return c.train.num_epochs * -(-train_records * c.data.dataset_repeat // c.data.batch_size)


def make_optimizer(c):
  o = c.optim
  peak = scaled_lr(c)
  decay = max(c.train.num_steps - o.warmup_steps, 1)
  if o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, peak, max(o.warmup_steps, 1), o.warmup_steps + decay)
  else:
    lr = optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(o.warmup_steps, 1)), optax.constant_schedule(peak)],
      [max(o.warmup_steps, 1)],
    )
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  return optax.chain(*parts), lr


class StateFactory:
  """Creates the train state directly sharded (jit with out_shardings), never as a full host copy."""

  def __init__(self, c, mesh, rules):
    self.c, self.mesh, self.cfg = c, mesh, dit_config(c)
    self.tx, self.schedule = make_optimizer(c)
    abstract = nnx.eval_shape(lambda: WanDiT(self.cfg, rngs=nnx.Rngs(0)))
    self.graphdef, params, frozen = nnx.split(abstract, trainable_filter(self.cfg), ...)
    replicated = NamedSharding(mesh, P())
    self.param_shardings = shardings_of(params, mesh, rules)
    self.frozen_shardings = shardings_of(frozen, mesh, rules)
    abstract_opt = jax.eval_shape(self.tx.init, params.to_pure_dict())
    opt_shardings = optax.tree_map_params(
      self.tx, lambda _, s: s, abstract_opt, self.param_shardings, transform_non_params=lambda _: replicated
    )
    self.state_shardings = {
      "step": replicated,
      "rng": replicated,
      "skipped": replicated,
      "params": self.param_shardings,
      "opt_state": opt_shardings,
    }
    if c.optim.ema_decay > 0:
      self.state_shardings["ema"] = self.param_shardings

  def _init(self, seed):
    model = WanDiT(self.cfg, rngs=nnx.Rngs(seed))
    _, params, frozen = nnx.split(model, trainable_filter(self.cfg), ...)
    dtype = jnp.dtype(self.c.optim.param_dtype)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    params, frozen = (jax.tree.map(cast, x.to_pure_dict()) for x in (params, frozen))
    state = {
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.key(seed)),
      "skipped": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.tx.init(params),
    }
    if self.c.optim.ema_decay > 0:
      state["ema"] = params
    return state, frozen

  def create(self):
    """(state, frozen) on the mesh; base weights from `init_from` when set."""
    init = jax.jit(self._init, static_argnums=0, out_shardings=(self.state_shardings, self.frozen_shardings))
    state, frozen = init(self.c.train.seed)
    if self.c.init_from:  # base weights: the trainable params (full) or the frozen ones (LoRA)
      if self.cfg.lora_rank:
        frozen = convert.restore_params(self.c.init_from, checkpoint.abstract_like(frozen), kind="dit")
      else:
        state["params"] = convert.restore_params(
          self.c.init_from, checkpoint.abstract_like(state["params"]), kind="dit"
        )
        if "ema" in state:
          state["ema"] = jax.tree.map(jnp.copy, state["params"])
    return state, frozen

  def create_frozen(self):
    """Only the frozen (never checkpointed) params, for a resume: what `create` returns second."""
    if self.c.init_from and self.cfg.lora_rank:
      return convert.restore_params(self.c.init_from, self.abstract()[1], kind="dit")
    return jax.jit(lambda: self._init(self.c.train.seed)[1], out_shardings=self.frozen_shardings)()

  def abstract(self):
    """ShapeDtypeStructs (with shardings) of (state, frozen), for restore and AOT compiles."""
    shapes = jax.eval_shape(functools.partial(self._init, self.c.train.seed))
    shard = (self.state_shardings, self.frozen_shardings)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard)


def load_dit(c, *, workdir: str | None = None, checkpoint_dir: str | None = None) -> WanDiT:
  """The DiT to sample: a training workdir's latest checkpoint (EMA weights when present, base
  weights as the run had them), or a converted / PyTorch checkpoint."""
  mesh = sharding.make_mesh(validate(c, jax.device_count()))
  rules = sharding.logical_rules(c.sharding_rules.to_dict())
  if checkpoint_dir:
    cfg = dataclasses.replace(
      _checkpoint_config(checkpoint_dir, "dit"),
      **{k: getattr(dit_config(c), k) for k in RUN_FIELDS if k != "lora_rank"},
      lora_rank=0,
    )
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return frozen_module(
        WanDiT, cfg, init_from=checkpoint_dir, kind="dit", seed=0, mesh=mesh, rules=rules, name="DiT"
      )
  factory = StateFactory(c, mesh, rules)
  if factory.cfg.lora_rank and not c.init_from:
    print(
      f"LoRA base weights: the seeded random init of train.seed={c.train.seed}, as the run trained "
      "them (its config has no init_from)",
      flush=True,
    )
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoint in {ckpt.directory}")
  with jax.set_mesh(mesh):
    abstract_state, _ = factory.abstract()
    frozen = factory.create_frozen()
    state = ckpt.restore(step, abstract_state, None)
  ckpt.close()
  print(f"loaded step {step} of {workdir}", flush=True)
  return nnx.merge(factory.graphdef, state.get("ema", state["params"]), frozen)


# =============================================================================================
# Batches: per-process pipeline -> global arrays sharded by the rules' `batch` entry
# =============================================================================================
def batch_sharding(mesh, rules) -> NamedSharding:
  return sharding.named_sharding(mesh, ("batch",), rules)


def batch_spec(c) -> dict[str, jax.ShapeDtypeStruct]:
  """Global batch shapes and dtypes for the config (what `to_global` makes of the pipeline's)."""
  b, f, h, w = c.data.batch_size, c.data.num_frames, c.data.height, c.data.width
  if c.data.source == "latents":
    lat = latent_shape(c)
    return {
      "latents": jax.ShapeDtypeStruct((b, *lat), jnp.float32),
      "context": jax.ShapeDtypeStruct((b, c.text.max_length, dit_config(c).text_dim), jnp.float32),
      "context_mask": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.bool_),
    }
  return {
    "video": jax.ShapeDtypeStruct((b, f, h, w, 3), jnp.float32),
    "text_ids": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.int32),
    "text_mask": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.bool_),
  }


def to_global(batch: dict, mesh, rules) -> dict:
  """Per-process numpy batch -> global arrays, the batch axis sharded by the rules."""
  spec = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(spec, v) for k, v in batch.items() if k != "index"}


def check_latent_cache(c, source, where: str) -> None:
  """Refuses a latent cache (`microverse_jax.encode`) written for another size, text length or model
  than the config's, naming both values: the step would otherwise crash or train at the cache's size.
  Fewer frames than the cache's is fine (the causal VAE's first latents are those of the first frames)."""
  cache = latent_cache.recorded(source)
  channels, text_dim = latent_shape(c)[-1], dit_config(c).text_dim
  checks = (  # key, the config's value, what the cache records, what to call it, the config value is fine when
    ("data.height", c.data.height, "height", "height", operator.eq),
    ("data.width", c.data.width, "width", "width", operator.eq),
    ("data.num_frames", c.data.num_frames, "num_frames", "num_frames", operator.le),
    ("data.frame_stride", c.data.frame_stride, "frame_stride", "frame_stride", operator.eq),
    ("text.max_length", c.text.max_length, "text_length", "text_length", operator.eq),
    ("model.text_dim", text_dim, "context_width", "context width", operator.eq),
    ("model.in_channels", channels, "latent_channels", "latent channels", operator.eq),
  )
  for key, ours, field, name, fits in checks:
    if not fits(ours, cache[field]):
      more = " or fewer" if fits is operator.le else ""
      raise ValueError(
        f"{key}={ours}, but the latent cache {where} holds {name} {cache[field]}: set it to {cache[field]}{more}"
      )


def load_batches(c, tokenizer, split: str, *, seed: int, shuffle: bool, num_epochs=None, drop_remainder=True):
  """This process's batch iterator over `split` (Grain; checkpointable)."""
  data_dir = os.path.expanduser(c.data.data_dir)
  source = input_pipeline.load_source(c.data.name, split, data_dir)
  per_process = c.data.batch_size // jax.process_count()
  if c.data.source == "latents":
    check_latent_cache(c, source, os.path.join(data_dir, c.data.name))
    buckets = input_pipeline.bucket_sizes(c.data.num_frames, frame_buckets(c))
    return latent_cache.make_iterator(
      source,
      batch_size=per_process,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      worker_count=c.data.worker_count,
      drop_remainder=drop_remainder,
      latent_buckets=tuple(latent_shape(c, num_frames=b)[0] for b in buckets),
    )
  return input_pipeline.make_video_iterator(
    source,
    batch_size=per_process,
    num_frames=c.data.num_frames,
    height=c.data.height,
    width=c.data.width,
    tokenizer=tokenizer,
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    worker_count=c.data.worker_count,
    frame_stride=c.data.frame_stride,
    drop_remainder=drop_remainder,
    frame_buckets=frame_buckets(c),
  )
