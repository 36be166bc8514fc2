"""Pure-jnp multi-head attention: the oracle every kernel is tested against."""

from __future__ import annotations

import jax.numpy as jnp


def attention_reference(q, k, v, kv_mask=None):
  """Softmax attention in fp32 accumulation.

  q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool, True = attend.
  Returns (B, Tq, N, D) in q's dtype. Rows whose keys are all masked return zeros.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
  if kv_mask is not None:
    logits = jnp.where(kv_mask[:, None, None, :], logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(logits - m)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bnqk,bknd->bqnd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)
