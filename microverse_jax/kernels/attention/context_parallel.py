"""Attention on a device mesh: batch over (data, fsdp), heads over tensor, Ulysses over context.

Inside `jax.shard_map` every device holds q: (B/dp, Tq/cp, N/tp, D), sequence-sharded over the
`context` axis. Self-attention (Tq == Tk) uses Ulysses: an all-to-all over `context` trades the
sequence shard for a head shard, (B/dp, Tq, N/(tp*cp), D), the local kernel attends over the full
sequence, and a second all-to-all restores the sequence shard. Cross-attention (Tq != Tk, text keys)
needs no communication: keys and values are replicated over `context`, each device attends its own
queries. Lengths that `context` does not divide are padded (padded keys masked, padded queries dropped).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
CONTEXT_AXIS = "context"


def _auto_axis_sizes(mesh) -> dict[str, int]:
  """Sizes of the mesh axes that are not already manual (i.e. usable by a new shard_map)."""
  if mesh is None or mesh.empty:
    return {}
  return {
    name: size for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types) if kind != AxisType.Manual
  }


def should_shard(mesh) -> bool:
  """True when `mesh` has a (data, fsdp, tensor, context) axis of size > 1 that is not manual."""
  sizes = _auto_axis_sizes(mesh)
  return any(sizes.get(a, 1) > 1 for a in BATCH_AXES + (HEAD_AXIS, CONTEXT_AXIS))


def _pad_tokens(x, length: int, value=0):
  if x.shape[1] == length:
    return x
  widths = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x, widths, constant_values=value)


def sharded_attention(local_attention: Callable, q, k, v, kv_mask, mesh):
  """Runs `local_attention(q, k, v, kv_mask)` per shard of `mesh` (see the module docstring).

  q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool or None. Returns (B, Tq, N, D).
  """
  sizes = _auto_axis_sizes(mesh)
  b, tq, n, _ = q.shape
  tk = k.shape[1]
  batch_axes = tuple(a for a in BATCH_AXES if sizes.get(a, 1) > 1)
  if b % math.prod(sizes[a] for a in batch_axes):
    batch_axes = ()  # e.g. a single example on a data-parallel mesh: every shard computes it
  tp = sizes.get(HEAD_AXIS, 1)
  head_axis = HEAD_AXIS if tp > 1 and n % tp == 0 else None
  heads_local = n // tp if head_axis else n
  cp = sizes.get(CONTEXT_AXIS, 1)
  self_attention = tq == tk
  if cp > 1 and self_attention and heads_local % cp:
    raise ValueError(
      f"attention: Ulysses context parallelism needs the local heads ({heads_local} = "
      f"{n} heads / tensor {tp if head_axis else 1}) divisible by mesh axis "
      f"context={cp}; change mesh.context or mesh.tensor"
    )
  context_axis = CONTEXT_AXIS if cp > 1 else None

  t_pad = -(-tq // cp) * cp
  if t_pad != tq:
    q = _pad_tokens(q, t_pad)
    if self_attention:
      k, v = _pad_tokens(k, t_pad), _pad_tokens(v, t_pad)
      kv_mask = _pad_tokens(jnp.ones((b, tk), bool) if kv_mask is None else kv_mask, t_pad, False)

  batch = batch_axes if len(batch_axes) > 1 else (batch_axes[0] if batch_axes else None)
  q_spec = P(batch, context_axis, head_axis, None)
  kv_spec = q_spec if self_attention else P(batch, None, head_axis, None)
  mask_spec = P(batch, None)  # the (tiny) key mask is replicated over context

  def per_shard(q, k, v, kv_mask):
    if context_axis is None or not self_attention:
      return local_attention(q, k, v, kv_mask)
    seq_to_heads = lambda x: jax.lax.all_to_all(x, context_axis, 2, 1, tiled=True)
    out = local_attention(seq_to_heads(q), seq_to_heads(k), seq_to_heads(v), kv_mask)
    return jax.lax.all_to_all(out, context_axis, 1, 2, tiled=True)

  if kv_mask is None:
    fn = lambda q, k, v: per_shard(q, k, v, None)
    in_specs, args = (q_spec, kv_spec, kv_spec), (q, k, v)
  else:
    fn = per_shard
    in_specs, args = (q_spec, kv_spec, kv_spec, mask_spec), (q, k, v, kv_mask)
  out = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)
  return out[:, :tq]
