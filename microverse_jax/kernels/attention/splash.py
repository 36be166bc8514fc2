"""JAX's splash attention (Pallas TPU) behind our calling convention, for comparison.

q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool (True = attend). Returns (B, Tq, N, D).
Splash takes (N, T, D) per example and no softmax scale: we scale q, vmap over B, pad the lengths to
the blocks and express the key padding mask as segment ids (queries 1, attended keys 1, others 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

LANES = 128


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pad_tokens(x, length: int):
  return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def splash_attention(q, k, v, kv_mask=None, *, block_sizes: sa.BlockSizes | None = None, interpret: bool = False):
  """Splash attention, full (non-causal) mask plus an optional key padding mask."""
  b, tq, n, d = q.shape
  tk = k.shape[1]
  bq = min(512, _round_up(tq, LANES))
  bk = min(512, _round_up(tk, LANES))
  sizes = block_sizes or sa.BlockSizes(
    block_q=bq, block_kv=bk, block_q_dkv=bq, block_kv_dkv=bk, block_q_dq=bq, block_kv_dq=bk
  )
  tq_pad = _round_up(tq, max(sizes.block_q, sizes.block_q_dkv or 1, sizes.block_q_dq or 1))
  tk_pad = _round_up(tk, max(sizes.block_kv, sizes.block_kv_dkv or 1, sizes.block_kv_dq or 1))
  if kv_mask is None:
    kv_mask = jnp.ones((b, tk), bool)
  kv_ids = _pad_tokens(kv_mask.astype(jnp.int32), tk_pad)  # padded keys: 0
  q_ids = jnp.ones((b, tq_pad), jnp.int32)
  kernel = sa.make_splash_mha(
    sa.MultiHeadMask([sa.FullMask((tq_pad, tk_pad))] * n),
    block_sizes=sizes,
    head_shards=1,
    q_seq_shards=1,
    interpret=interpret,
  )
  to_ntd = lambda x, t: jnp.swapaxes(_pad_tokens(x, t), 1, 2)
  qs = q * jnp.asarray(d**-0.5, q.dtype)
  out = jax.vmap(lambda q_, k_, v_, qi, ki: kernel(q_, k_, v_, segment_ids=sa.SegmentIds(qi, ki)))(
    to_ntd(qs, tq_pad), to_ntd(k, tk_pad), to_ntd(v, tk_pad), q_ids, kv_ids
  )
  out = jnp.swapaxes(out, 1, 2)[:, :tq]
  # Splash averages over masked keys when a row has none: return zeros like the other kernels.
  return jnp.where(jnp.any(kv_mask, axis=1)[:, None, None, None], out, 0).astype(q.dtype)
