"""Shared layers: dense with optional LoRA, norms, timestep embedding, 3-D rotary embedding.

Parameters are fp32 and carry logical axis names (see `microverse_jax.sharding`); computation
runs in the module's `dtype`. Norms always compute in fp32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

# What a stored weight may be (cast to its parameter's dtype on load); integers and booleans are refused.
FLOAT_DTYPES = frozenset(
  np.dtype(t)
  for t in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
)

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes) -> nnx.Param:
  """An fp32 parameter with logical axis names."""
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=axes)


class Dense(nnx.Module):
  """y = x @ kernel + bias, optionally plus a LoRA delta (alpha / rank) * x @ lora_a @ lora_b.

  kernel: (in, out) with logical `axes`; LoRA factors are `nnx.LoRAParam`s, initialised as PEFT does (lora_a
  kaiming-uniform with a=sqrt(5): U(+-1/sqrt(in)); lora_b zeros).
  """

  def __init__(
    self,
    din: int,
    dout: int,
    axes: Axes,
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype=jnp.float32,
    lora_rank: int = 0,
    lora_alpha: float = 1.0,
  ):
    self.kernel = param(rngs, nnx.initializers.lecun_normal(), (din, dout), axes)
    self.bias = param(rngs, nnx.initializers.zeros, (dout,), axes[-1:]) if use_bias else None
    self.dtype = dtype
    self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
    if lora_rank:
      # PEFT's init: torch kaiming_uniform_(A, a=sqrt(5)) on A (r, in), i.e. U(-1/sqrt(in), 1/sqrt(in))
      # (gain sqrt(2 / (1 + 5)) x sqrt(3 / fan_in)); B zeros, so the delta starts at zero.
      a = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(
        rngs.params(), (din, lora_rank), jnp.float32
      )
      self.lora_a = nnx.LoRAParam(a, out_sharding=(axes[0], None))
      self.lora_b = nnx.LoRAParam(jnp.zeros((lora_rank, dout), jnp.float32), out_sharding=(None, axes[-1]))
    else:
      self.lora_a = self.lora_b = None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.dtype))
    if self.lora_a is not None:
      delta = jnp.dot(jnp.dot(x, self.lora_a[...].astype(self.dtype)), self.lora_b[...].astype(self.dtype))
      y = y + self.lora_scale * delta
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """x / rms(x) * scale over the last axis, in fp32."""

  def __init__(self, dim: int, axes: Axes, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm in fp32, with or without affine parameters; returns fp32."""

  def __init__(self, dim: int, axes: Axes, *, rngs: nnx.Rngs, eps: float = 1e-6, affine: bool = False):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes) if affine else None
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), axes) if affine else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.scale is not None:
      y = y * self.scale[...] + self.bias[...]
    return y


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [cos, sin] of timesteps t: (B,) -> (B, dim), or any (...) -> (..., dim); fp32."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
  """Head-dim split of the 3-D rotary embedding: (frames, height, width) widths."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0):
  """Rotation angles for a (F', H', W') token grid, flattened f-major: (T, D/2) fp32 cos and sin.

  Computed in float64 with numpy at trace time (the grid is static), then cast to fp32.
  """
  parts = []
  for axis, (n, d) in enumerate(zip(grid, rope_split(head_dim))):
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[: d // 2] / d)
    ang = np.outer(np.arange(n, dtype=np.float64), inv)
    shape = [1, 1, 1, d // 2]
    shape[axis] = n
    parts.append(np.broadcast_to(ang.reshape(shape), (*grid, d // 2)))
  angles = np.concatenate(parts, axis=-1).reshape(-1, head_dim // 2)
  return jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved pairs (x[2i], x[2i+1]) of x: (B, T, N, D) by angles (T, D/2)."""
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
