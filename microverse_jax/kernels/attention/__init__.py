"""Attention kernels behind one entry point: `attention(q, k, v, kv_mask=..., impl=...)`."""

from microverse_jax.kernels.attention.api import IMPLS, attention, resolve_impl
from microverse_jax.kernels.attention.reference import attention_reference

__all__ = ["IMPLS", "attention", "attention_reference", "resolve_impl"]
