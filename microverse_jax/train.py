"""The canonical trainer: flow-matching training of the Wan DiT, sharded over a device mesh.

  python -m microverse_jax.train --config=configs/microsim_tiny.py --workdir=DIR [--config.key=value ...]

Rerunning the same command resumes from the latest checkpoint in DIR/checkpoints. SIGTERM saves
at the current step and exits. Projects fork a config, not this file.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from microverse_jax import checkpoint, convert, diffusion, flops, input_pipeline, sharding
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

# =============================================================================================
# Config: validated before anything is compiled
# =============================================================================================
def dit_config(c: ml_collections.ConfigDict) -> WanDiTConfig:
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.model.to_dict().items()}
  return WanDiTConfig(**fields)


def latent_shape(c, num_frames=None, height=None, width=None) -> tuple[int, int, int, int]:
  """(F', H', W', C) the DiT sees for a video size (default: the config's data size)."""
  f, h, w = num_frames or c.data.num_frames, height or c.data.height, width or c.data.width
  if c.autoencoder.kind == "pixel":
    return f, h, w, 3
  from microverse_jax.models.wan_vae import WanVAEConfig
  vae = WanVAEConfig.preset(c.autoencoder.preset)
  t, s = vae.temporal_factor, vae.spatial_factor
  if (f - 1) % t or h % s or w % s:
    raise ValueError(f"frames/height/width = {f}/{h}/{w}: the Wan-VAE needs frames = 1 + {t}k "
                     f"(4k + 1 for Wan2.1's VAE) and sizes divisible by {s}")
  return 1 + (f - 1) // t, h // s, w // s, vae.z_dim


def validate(c, num_devices: int) -> dict[str, int]:
  """Checks the config against the devices and itself; returns the resolved mesh shape."""
  mesh = sharding.resolve_mesh_shape(c.mesh.to_dict(), num_devices)
  if c.autoencoder.kind not in ("pixel", "wan_vae"):
    raise ValueError(f"autoencoder.kind={c.autoencoder.kind!r}: expected 'pixel' or 'wan_vae'")
  if c.data.source not in ("video", "latents"):
    raise ValueError(f"data.source={c.data.source!r}: expected 'video' or 'latents'")
  shards = mesh["data"] * mesh["fsdp"]
  micro, rem = divmod(c.data.batch_size, c.optim.grad_accum)
  if rem or micro % shards:
    raise ValueError(f"data.batch_size={c.data.batch_size} must split into optim.grad_accum="
                     f"{c.optim.grad_accum} micro-batches divisible by the {shards} data shards (mesh.data x mesh.fsdp)")
  if c.data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={c.data.batch_size} is not divisible by {jax.process_count()} processes")
  cfg = dit_config(c)
  lat = latent_shape(c)
  if lat[-1] != cfg.in_channels:
    raise ValueError(f"model.in_channels={cfg.in_channels}, but the {c.autoencoder.kind} autoencoder gives {lat[-1]}")
  if cfg.num_heads % mesh["tensor"] or cfg.num_heads % mesh["context"]:
    raise ValueError(f"model.num_heads={cfg.num_heads} must divide by mesh.tensor and mesh.context")
  if c.train.caption_dropout and c.data.source != "video":
    raise ValueError("train.caption_dropout needs data.source='video' (a latent cache stores encoded captions)")
  if c.diffusion.prediction not in diffusion.PREDICTIONS:
    raise ValueError(f"diffusion.prediction={c.diffusion.prediction!r}: expected one of {diffusion.PREDICTIONS}")
  if c.optim.schedule not in ("constant", "cosine"):
    raise ValueError(f"optim.schedule={c.optim.schedule!r}: expected 'constant' or 'cosine'")
  for key, path in (("init_from", c.init_from), ("text.init_from", c.text.init_from),
                    ("autoencoder.init_from", c.autoencoder.init_from)):
    if path and not epath.Path(path).exists():
      raise FileNotFoundError(f"{key}={path}: no such checkpoint")
  return mesh


# =============================================================================================
# Frozen encoders: text (umT5) and video (pixel space or Wan-VAE)
# =============================================================================================
class Encoders(nnx.Module):
  """Frozen text encoder and autoencoder. text(ids (B,L), mask) -> (B, L, D); encode/decode video."""

  def __init__(self, c, *, rngs: nnx.Rngs):
    from microverse_jax.models.umt5 import UMT5Config, UMT5Encoder
    self.text_encoder = UMT5Encoder(UMT5Config.preset(c.text.preset, **_text_overrides(c)), rngs=rngs)
    from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig
    wan = c.autoencoder.kind == "wan_vae"  # one assignment: nnx fixes an attribute's kind at first set
    self.vae = WanVAE(WanVAEConfig.preset(c.autoencoder.preset), rngs=rngs) if wan else None

  def text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def encode(self, video):
    """video (B, F, H, W, 3) in [-1, 1] -> latents (B, F', H', W', C), normalised."""
    return video if self.vae is None else self.vae.normalize_latents(self.vae.encode(video))

  def decode(self, latents):
    return latents if self.vae is None else self.vae.decode(self.vae.denormalize_latents(latents))


def _text_overrides(c) -> dict:
  return {"vocab_size": 259, "d_model": c.model.text_dim} if c.text.tokenizer == "bytes" else {}


def build_encoders(c):
  """(tokenizer, Encoders) with weights from text.init_from / autoencoder.init_from, or seeded random."""
  if c.text.tokenizer == "bytes":
    tokenizer = input_pipeline.ByteTokenizer(c.text.max_length)
  else:
    from microverse_jax.models.umt5 import UMT5Tokenizer
    tokenizer = UMT5Tokenizer(c.text.tokenizer, max_length=c.text.max_length)
  encoders = Encoders(c, rngs=nnx.Rngs(c.train.seed + 1))
  if c.text.init_from:
    convert.load_params(c.text.init_from, encoders.text_encoder)
  if c.autoencoder.init_from:
    convert.load_params(c.autoencoder.init_from, encoders.vae)
  return tokenizer, encoders


# =============================================================================================
# Train state: trainable params (all, or LoRA only), optimizer, EMA, step, RNG
# =============================================================================================
def trainable_filter(cfg: WanDiTConfig):
  return nnx.LoRAParam if cfg.lora_rank else nnx.Param


def make_optimizer(c):
  o = c.optim
  decay = max(c.train.num_steps - o.warmup_steps, 1)
  if o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), o.warmup_steps + decay)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)),
                               optax.constant_schedule(o.lr)], [max(o.warmup_steps, 1)])
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  return optax.chain(*parts), lr


def _shardings_of(state: nnx.State, mesh, rules) -> dict:
  """Pure-dict tree of NamedShardings from each variable's logical axis names."""
  out: dict = {}
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get("out_sharding") or (None,) * var.ndim
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(mesh, sharding.logical_to_spec(names, rules))
  return out


class StateFactory:
  """Creates the train state directly sharded (jit with out_shardings), never as a full host copy."""

  def __init__(self, c, mesh, rules):
    self.c, self.mesh, self.cfg = c, mesh, dit_config(c)
    self.tx, self.schedule = make_optimizer(c)
    abstract = nnx.eval_shape(lambda: WanDiT(self.cfg, rngs=nnx.Rngs(0)))
    self.graphdef, params, frozen = nnx.split(abstract, trainable_filter(self.cfg), ...)
    replicated = NamedSharding(mesh, P())
    self.param_shardings = _shardings_of(params, mesh, rules)
    self.frozen_shardings = _shardings_of(frozen, mesh, rules)
    abstract_opt = jax.eval_shape(self.tx.init, params.to_pure_dict())
    opt_shardings = optax.tree_map_params(self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
                                          transform_non_params=lambda _: replicated)
    self.state_shardings = {"step": replicated, "rng": replicated, "params": self.param_shardings,
                            "opt_state": opt_shardings}
    if c.optim.ema_decay > 0:
      self.state_shardings["ema"] = self.param_shardings

  def _init(self, seed):
    model = WanDiT(self.cfg, rngs=nnx.Rngs(seed))
    _, params, frozen = nnx.split(model, trainable_filter(self.cfg), ...)
    params = params.to_pure_dict()
    state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed)),
             "params": params, "opt_state": self.tx.init(params)}
    if self.c.optim.ema_decay > 0:
      state["ema"] = params
    return state, frozen.to_pure_dict()

  def create(self):
    """(state, frozen) on the mesh; base weights from `init_from` when set."""
    init = jax.jit(self._init, static_argnums=0, out_shardings=(self.state_shardings, self.frozen_shardings))
    state, frozen = init(self.c.train.seed)
    if self.c.init_from:  # base weights: the trainable params (full) or the frozen ones (LoRA)
      if self.cfg.lora_rank:
        frozen = convert.restore_params(self.c.init_from, checkpoint.abstract_like(frozen))
      else:
        state["params"] = convert.restore_params(self.c.init_from, checkpoint.abstract_like(state["params"]))
        if "ema" in state:
          state["ema"] = jax.tree.map(jnp.copy, state["params"])
    return state, frozen

  def create_frozen(self):
    """Only the frozen (never checkpointed) params, for a resume: what `create` returns second."""
    if self.c.init_from and self.cfg.lora_rank:
      return convert.restore_params(self.c.init_from, self.abstract()[1])
    return jax.jit(lambda: self._init(self.c.train.seed)[1], out_shardings=self.frozen_shardings)()

  def abstract(self):
    """ShapeDtypeStructs (with shardings) of (state, frozen), for restore and AOT compiles."""
    shapes = jax.eval_shape(functools.partial(self._init, self.c.train.seed))
    shard = (self.state_shardings, self.frozen_shardings)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard)


# =============================================================================================
# The step
# =============================================================================================
def make_train_step(c, graphdef, tx, schedule):
  """step(state, frozen, encoders_state, enc_graphdef-bound batch) -> (state, metrics)."""
  fm = diffusion.FlowMatching(shift=c.diffusion.shift, prediction=c.diffusion.prediction)
  accum, ema_decay = c.optim.grad_accum, c.optim.ema_decay

  def loss_fn(params, frozen, latents, context, key):
    model = nnx.merge(graphdef, params, frozen)
    k_t, k_noise = jax.random.split(key)
    index = fm.sample_index(k_t, latents.shape[0])
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t, t, target, weight = fm.training_inputs(latents, noise, index)
    v = fm.velocity(model(x_t, t, context), x_t, t)
    per_sample = jnp.mean(jnp.square(v - target), axis=tuple(range(1, v.ndim)))
    return jnp.mean(per_sample * weight)

  def step(state, frozen, encode, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    if c.train.caption_dropout > 0:
      key, k_drop = jax.random.split(key)
      batch = drop_captions(batch, k_drop, c.train.caption_dropout)
    latents, context = encode(batch)
    grad_fn = jax.value_and_grad(loss_fn)
    if accum == 1:
      loss, grads = grad_fn(state["params"], frozen, latents, context, key)
    else:
      split = lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
      def micro(carry, xs):
        lat, ctx, i = xs
        loss, g = grad_fn(state["params"], frozen, lat, ctx, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (loss, g)), None
      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state["params"]))
      (loss, grads), _ = jax.lax.scan(micro, zeros, (split(latents), split(context), jnp.arange(accum)))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if ema_decay > 0:
      new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
    return new, {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state["step"])}

  return step


def drop_captions(batch: dict, key, rate: float) -> dict:
  """Replaces each caption by the empty prompt with probability `rate` (trains the unconditional
  model that classifier-free guidance needs). The empty prompt is eos alone (id 1, T5 convention),
  what both tokenizers make of ""."""
  ids, mask = batch["text_ids"], batch["text_mask"]
  drop = jax.random.bernoulli(key, rate, (ids.shape[0], 1))
  first = jnp.arange(ids.shape[1]) == 0
  return {**batch, "text_ids": jnp.where(drop, first.astype(ids.dtype), ids),
          "text_mask": jnp.where(drop, first, mask)}


def jit_train_step(c, factory: StateFactory, encode):
  """The jitted step(state, frozen, encoder_state, batch) -> (state, metrics); state is donated."""
  step_fn = make_train_step(c, factory.graphdef, factory.tx, factory.schedule)
  return jax.jit(lambda s, f, e, b: step_fn(s, f, functools.partial(encode, e), b),
                 donate_argnums=(0,), out_shardings=(factory.state_shardings, None))


def batch_spec(c) -> dict[str, jax.ShapeDtypeStruct]:
  """Global batch shapes and dtypes for the config (what `to_global` makes of the pipeline's)."""
  b, f, h, w = c.data.batch_size, c.data.num_frames, c.data.height, c.data.width
  if c.data.source == "latents":
    lat = latent_shape(c)
    return {"latents": jax.ShapeDtypeStruct((b, *lat), jnp.float32),
            "context": jax.ShapeDtypeStruct((b, c.text.max_length, c.model.text_dim), jnp.float32),
            "context_mask": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.bool_)}
  return {"video": jax.ShapeDtypeStruct((b, f, h, w, 3), jnp.float32),
          "text_ids": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.int32),
          "text_mask": jax.ShapeDtypeStruct((b, c.text.max_length), jnp.bool_)}


def make_encode(c, enc_graphdef):
  """encode(enc_state, batch) -> (latents (B,F',H',W',C) fp32, context (B,L,D)); frozen (no gradient)."""
  def encode(enc_state, batch):
    if c.data.source == "latents":
      return batch["latents"], batch["context"]
    enc = nnx.merge(enc_graphdef, enc_state)
    latents = enc.encode(batch["video"])
    context = enc.text(batch["text_ids"], batch["text_mask"])
    return jax.lax.stop_gradient(latents.astype(jnp.float32)), jax.lax.stop_gradient(context)
  return encode


def make_eval_step(c, graphdef):
  """Held-out loss at one fixed timestep bucket with fixed noise: comparable across runs."""
  fm = diffusion.FlowMatching(shift=c.diffusion.shift, prediction=c.diffusion.prediction)

  def eval_step(params, frozen, latents, context, valid, bucket, key):
    model = nnx.merge(graphdef, params, frozen)
    noise = jax.random.normal(key, latents.shape, jnp.float32)
    x_t, t, target, _ = fm.training_inputs(latents, noise, jnp.full((latents.shape[0],), bucket))
    v = fm.velocity(model(x_t, t, context), x_t, t)
    per = jnp.mean(jnp.square(v - target), axis=tuple(range(1, latents.ndim)))
    return jnp.sum(per * valid), jnp.sum(valid)

  return eval_step


# =============================================================================================
# Metrics: WORKDIR/metrics.jsonl, TensorBoard, a progress line (process 0 only)
# =============================================================================================
class MetricWriter:
  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.path = epath.Path(workdir) / "metrics.jsonl"
      # Rewritten whole at each write (temp, then rename): GCS objects cannot be appended to.
      self.text = self.path.read_text() if self.path.exists() else ""
      self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    self.text += json.dumps(row) + "\n"
    tmp = self.path.parent / f".{self.path.name}.tmp"
    tmp.write_text(self.text)
    tmp.replace(self.path)
    for k, v in row.items():
      if k != "step" and math.isfinite(v):  # undefined scores (e.g. no tracks) stay NaN in the JSONL only
        self.tb.add_scalar(k, v, step)
    self.tb.flush()
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def load_batches(c, tokenizer, split: str, *, seed: int, shuffle: bool, num_epochs=None,
                 drop_remainder=True):
  data_dir = os.path.expanduser(c.data.data_dir)
  try:
    source = input_pipeline.load_source(c.data.name, split, data_dir)
  except ValueError:
    if c.data.name != "microsim_synth":
      raise
    from jax.experimental import multihost_utils
    from microverse_jax import build_dataset  # the offline dataset builds on first use (~30 s)
    if jax.process_index() == 0:
      print(f"building microsim_synth in {data_dir} ...", flush=True)
      build_dataset.build("microsim_synth", data_dir)
    multihost_utils.sync_global_devices("microsim_synth built")
    try:
      source = input_pipeline.load_source(c.data.name, split, data_dir)
    except ValueError:  # a host whose data_dir is its own local disk builds its own copy
      build_dataset.build("microsim_synth", data_dir)
      source = input_pipeline.load_source(c.data.name, split, data_dir)
  per_process = c.data.batch_size // jax.process_count()
  if c.data.source == "latents":
    return input_pipeline.make_latent_iterator(
        source, batch_size=per_process, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
        worker_count=c.data.worker_count, drop_remainder=drop_remainder)
  return input_pipeline.make_video_iterator(
      source, batch_size=per_process, num_frames=c.data.num_frames, height=c.data.height,
      width=c.data.width, tokenizer=tokenizer, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
      worker_count=c.data.worker_count, frame_stride=c.data.frame_stride, drop_remainder=drop_remainder)


def to_global(batch: dict, mesh) -> dict:
  """Per-process numpy batch -> global arrays sharded over ('data', 'fsdp') on the batch axis."""
  spec = NamedSharding(mesh, P(("data", "fsdp")))
  return {k: jax.make_array_from_process_local_data(spec, v) for k, v in batch.items() if k != "index"}


# =============================================================================================
# main
# =============================================================================================
def train(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training; returns the last logged metrics."""
  sharding.maybe_initialize_distributed()
  workdir = str(epath.Path(workdir).expanduser())
  mesh_shape = validate(c, jax.device_count())
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (epath.Path(workdir) / "config.json").write_text(c.to_json_best_effort(indent=1))

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(mesh_shape)
  rules = sharding.logical_rules(c.sharding_rules.to_dict())
  logging.info("mesh %s over %d devices (%s)", mesh_shape, jax.device_count(), jax.devices()[0].device_kind)

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    # -------------------------------------------------------------- data
    needs_encoders = c.data.source == "video" or c.eval.sample_every > 0
    tokenizer, encoders = build_encoders(c) if needs_encoders else (None, None)
    train_iter = load_batches(c, tokenizer, "train", seed=c.train.seed, shuffle=True)

    # -------------------------------------------------------------- model and state
    factory = StateFactory(c, mesh, rules)
    ckpt = checkpoint.Checkpointer(workdir, keep=c.train.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is None:
      state, frozen = factory.create()
    else:
      abstract_state, _ = factory.abstract()
      frozen = factory.create_frozen()
      state = ckpt.restore(latest, abstract_state, train_iter)
      logging.info("resumed from step %d", latest)
    enc_graphdef, enc_state = nnx.split(encoders) if encoders is not None else (None, {})
    n_train = sum(x.size for x in jax.tree.leaves(state["params"]))
    logging.info("trainable parameters: %s", f"{n_train:,}")

    # -------------------------------------------------------------- step
    encode = make_encode(c, enc_graphdef)
    train_step = jit_train_step(c, factory, encode)
    eval_step = jax.jit(make_eval_step(c, factory.graphdef))
    encode_jit = jax.jit(encode)

    # -------------------------------------------------------------- loop
    writer = MetricWriter(workdir)
    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    step = int(state["step"])
    lat = latent_shape(c)
    step_flops = flops.train_step_flops(factory.cfg, c.data.batch_size, lat[:3], c.text.max_length)
    peak = flops.peak_flops(jax.devices()[0])
    compiled = None
    profiling = c.train.profile_start >= 0 and jax.process_index() == 0
    last, t0, t_steps = {}, time.time(), step
    while step < c.train.num_steps:
      batch = to_global(next(train_iter), mesh)
      if compiled is None:
        compiled = train_step.lower(state, frozen, enc_state, batch).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
          logging.info("compiled step memory per device: args %.1f MB, temps %.1f MB, output %.1f MB",
                       mem.argument_size_in_bytes / 1e6, mem.temp_size_in_bytes / 1e6,
                       mem.output_size_in_bytes / 1e6)
      if profiling and step == c.train.profile_start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, metrics = compiled(state, frozen, enc_state, batch)
      step += 1
      if profiling and step == c.train.profile_start + c.train.profile_steps:
        jax.profiler.stop_trace()
      loss = float(metrics["loss"])
      if not math.isfinite(loss):
        ckpt.close()
        raise FloatingPointError(f"non-finite loss {loss} at step {step}; the last good checkpoint "
                                 f"(step {ckpt.latest_step()}) is intact in {ckpt.directory}")
      if step % c.train.log_every == 0 or step == c.train.num_steps:
        dt = (time.time() - t0) / max(step - t_steps, 1)
        last = {k: float(v) for k, v in metrics.items()}
        last.update(steps_per_sec=1.0 / dt, skipped_clips=float(sum(train_iter.skip_counts.values())))
        if peak:
          last["mfu"] = step_flops / dt / (peak * jax.device_count())
        writer.write(step, last)
        t0, t_steps = time.time(), step
      if c.eval.every and step % c.eval.every == 0:
        writer.write(step, evaluate(c, tokenizer, eval_step, encode_jit, state, frozen, enc_state, mesh))
      if c.eval.sample_every and step % c.eval.sample_every == 0:
        write_samples(c, workdir, step, state, frozen, factory.graphdef, tokenizer, encoders)
        if c.eval.physics:
          writer.write(step, physics_eval(c, state, frozen, factory.graphdef, tokenizer, encoders))
      if step % c.train.checkpoint_every == 0 or step == c.train.num_steps or stop["signal"]:
        ckpt.save(step, state, train_iter, force=True)
      if stop["signal"]:
        logging.warning("signal %s: saved step %d, exiting", stop["signal"], step)
        break
    ckpt.close()
  return last


def evaluate(c, tokenizer, eval_step, encode, state, frozen, enc_state, mesh) -> dict:
  """Validation flow-matching loss per timestep bucket (fixed noise, fixed batches)."""
  it = load_batches(c, tokenizer, "validation", seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  sums = {b: [0.0, 0.0] for b in c.eval.buckets}
  for i, raw in zip(range(c.eval.num_batches), it):
    valid = (raw["index"] >= 0).astype(np.float32)
    batch = to_global(raw, mesh)
    latents, context = encode(enc_state, batch)
    valid = jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "fsdp"))), valid)
    for b in c.eval.buckets:
      key = jax.random.fold_in(jax.random.key(1234), i)
      s, n = eval_step(state["params"], frozen, latents, context, valid, b, key)
      sums[b][0] += float(s)
      sums[b][1] += float(n)
  out = {f"eval/loss_t{b}": s / max(n, 1) for b, (s, n) in sums.items()}
  out["eval/loss"] = float(np.mean(list(out.values())))
  return out


def write_samples(c, workdir, step, state, frozen, graphdef, tokenizer, encoders) -> None:
  """Samples the config's prompts to WORKDIR/samples/step_<N>/<i>.mp4 (+ a PNG strip)."""
  from microverse_jax import sample
  params = state.get("ema", state["params"])
  model = nnx.merge(graphdef, params, frozen)
  out_dir = epath.Path(workdir) / "samples" / f"step_{step}"
  videos = sample.generate(model, encoders, tokenizer, list(c.eval.prompts), latent_shape(c),
                           seed=c.train.seed, **sample.config_settings(c))
  if jax.process_index() == 0:
    for i, v in enumerate(videos):
      sample.write_video(v, str(out_dir / f"{i}.mp4"), fps=c.eval.fps, strip=True)
    print(f"samples: {out_dir}", flush=True)


def physics_eval(c, state, frozen, graphdef, tokenizer, encoders) -> dict:
  """Physics-fidelity scores (microworldbench physics) of videos sampled for the first
  `eval.physics` validation clips of the procedural dataset (default build settings)."""
  from data.microsim_synth import processes
  from microverse_jax import sample
  from microworldbench.physics import score_videos
  d = processes.DEFAULTS
  val = [i for i in range(d["num_clips"]) if processes.split_of(i, d["num_clips"]) == "validation"]
  specs = [processes.clip_spec(i, seed=d["seed"], num_frames=d["num_frames"], size=d["size"], fps=d["fps"])
           for i in val[:c.eval.physics]]
  model = nnx.merge(graphdef, state.get("ema", state["params"]), frozen)
  videos = sample.generate(model, encoders, tokenizer, [s.caption for s in specs], latent_shape(c),
                           seed=c.train.seed, **sample.config_settings(c))
  rows = [{"process": s.process, "params": s.params, "size": d["size"]} for s in specs]
  return {k: v for k, v in score_videos(videos, rows).items() if k.count("/") <= 2}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.workdir is None or flags.FLAGS.config is None:
    raise app.UsageError("--config and --workdir are required")
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go (local or gs://).")
  app.run(main)
