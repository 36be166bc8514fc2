"""Batches of a `plans.Plan`: this process's Grain pipeline (raw video or the latent cache) -> global arrays
sharded by the rules' `batch` entry.
"""

from __future__ import annotations

import operator
import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from microverse_jax import input_pipeline, latent_cache, sharding


def batch_sharding(mesh, rules) -> NamedSharding:
  return sharding.named_sharding(mesh, ("batch",), rules)


def batch_spec(plan) -> dict[str, jax.ShapeDtypeStruct]:
  """Global batch shapes and dtypes of a plan (what `to_global` makes of the pipeline's)."""
  c = plan.c
  b, f, h, w = c.data.batch_size, c.data.num_frames, c.data.height, c.data.width
  if c.data.source == "latents":
    return {
      "latents": jax.ShapeDtypeStruct((b, *plan.latent_shape), jnp.float32),
      "context": jax.ShapeDtypeStruct((b, c.text.max_length, plan.dit.text_dim), jnp.float32),
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


def check_latent_cache(plan, source, where: str) -> None:
  """Refuses a latent cache (`microverse_jax.encode`) written for another size, text length or model
  than the config's, naming both values, or by another VAE (its latent grid): the step would otherwise crash or
  train at the cache's size.
  Fewer frames than the cache's is fine (the causal VAE's first latents are those of the first frames)."""
  c, cache = plan.c, latent_cache.recorded(source)
  channels, text_dim = plan.latent_shape[-1], plan.dit.text_dim
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
  grid, ours = tuple(source[0]["latents"].shape[1:3]), tuple(plan.latent_shape[1:3])
  if grid != ours:  # same size and channels, another VAE (e.g. Wan2.1's 8x against Wan2.2's 16x)
    raise ValueError(
      f"the latent cache {where} holds latents of {grid[0]}x{grid[1]} per frame, but the autoencoder "
      f"(autoencoder.init_from={c.autoencoder.init_from or '(random)'}) makes {ours[0]}x{ours[1]} of "
      f"{c.data.height}x{c.data.width}: it was encoded by another VAE; encode it with this one (encode --vae)"
    )


def load_batches(plan, tokenizer, split: str, *, seed: int, shuffle: bool, num_epochs=None, drop_remainder=True):
  """This process's batch iterator over `split` (Grain; checkpointable)."""
  c = plan.c
  data_dir = os.path.expanduser(c.data.data_dir)
  source = input_pipeline.load_source(c.data.name, split, data_dir)
  per_process = c.data.batch_size // jax.process_count()
  if c.data.source == "latents":
    check_latent_cache(plan, source, os.path.join(data_dir, c.data.name))
    buckets = input_pipeline.bucket_sizes(c.data.num_frames, plan.frame_buckets)
    return latent_cache.make_iterator(
      source,
      batch_size=per_process,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      worker_count=c.data.worker_count,
      drop_remainder=drop_remainder,
      latent_buckets=tuple(plan.latent_shape_of(num_frames=b)[0] for b in buckets),
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
    frame_buckets=plan.frame_buckets,
  )
