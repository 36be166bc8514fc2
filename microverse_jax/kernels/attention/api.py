"""One entry point for attention; implementations are selected by name.

q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool (True = attend). Returns (B, Tq, N, D).
"""
from __future__ import annotations

import jax

from microverse_jax.kernels.attention.reference import attention_reference

IMPLS = ("xla",)


def attention(q, k, v, *, kv_mask=None, impl: str = "auto", interpret: bool = False):
  if impl not in IMPLS + ("auto",):
    raise ValueError(f"attention impl={impl!r}; expected one of {IMPLS + ('auto',)}")
  return attention_reference(q, k, v, kv_mask)
