"""LoRA utilities. The factors live in `layers.Dense` (as `nnx.LoRAParam`); this merges them away."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from microverse_jax.models.layers import Dense


def merge_lora(model: nnx.Module) -> nnx.Module:
  """A copy of `model` without LoRA factors: each kernel becomes kernel + (alpha / r) * a @ b.

  Works on scanned (stacked) layers too: a (..., in, r) @ b (..., r, out) batches over the layer axis.
  """
  merged = nnx.clone(model)
  for _, module in nnx.iter_modules(merged):
    if isinstance(module, Dense) and module.lora_a is not None:
      delta = jnp.matmul(module.lora_a[...], module.lora_b[...]) * module.lora_scale
      module.kernel[...] = module.kernel[...] + delta
      module.lora_a = module.lora_b = None
      module.lora_scale = 0.0
  if hasattr(merged, "cfg") and dataclasses.is_dataclass(merged.cfg):
    merged.cfg = dataclasses.replace(merged.cfg, lora_rank=0)
  return merged


def lora_delta_norm(model: nnx.Module) -> jax.Array:
  """Global norm of all LoRA deltas (0 for a fresh LoRA model: lora_b starts at zero)."""
  sq = [jnp.sum(jnp.square(jnp.matmul(m.lora_a[...], m.lora_b[...]))) for _, m in nnx.iter_modules(model)
        if isinstance(m, Dense) and m.lora_a is not None]
  return jnp.sqrt(sum(sq)) if sq else jnp.zeros(())
