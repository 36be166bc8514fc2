"""Flash attention for GPU: Pallas kernels with the Triton lowering, forward and backward (custom VJP).

q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool (True = attend). Returns (B, Tq, N, D).

Works in the (B, T, N, D) layout directly (no transposes): each program owns one (batch, head) and
one token block, and loops over the other sequence inside the kernel.
  forward   grid (Tq/bq, B, N): online softmax in fp32 (base 2), writes O and the logsumexp L.
  dK, dV    grid (Tk/bk, B, N): loops over query blocks, recomputing P from L.
  dQ        grid (Tq/bq, B, N): loops over key blocks.
Tq and Tk are padded to the block sizes (only key blocks holding padded keys mask them), D to a
power of two >= 16.
Rows whose keys are all masked return zeros (as the reference does) and get zero gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from microverse_jax.kernels.attention.common import lookup_block_sizes, pad_axis, round_up

MASK_VALUE = -1e30
LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Token tile sizes (powers of two >= 16) and Triton launch parameters."""

  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"flash_gpu.BlockSizes.{name}={value}: expected a power of two >= 16")


# Starting points per GPU (device_kind substring -> sizes); untuned defaults otherwise.
CHIP_BLOCK_SIZES = {
  "h100": BlockSizes(128, 64, 64, 64, num_warps=8, num_stages=3),
  "h200": BlockSizes(128, 64, 64, 64, num_warps=8, num_stages=3),
  "a100": BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=2),
}


def _dot(a, b, trans_b: bool = False):
  """a @ b (or a @ b.T) of 2-D blocks, accumulated in fp32 (pl.dot left Pallas in JAX 0.12)."""
  return jax.lax.dot_general(a, b, (((1,), (1 if trans_b else 0,)), ((), ())), preferred_element_type=jnp.float32)


def default_block_sizes(device_kind: str | None = None) -> BlockSizes:
  """Block sizes for a GPU `device_kind` (e.g. "NVIDIA H100 80GB HBM3"); the local device's when None."""
  return lookup_block_sizes(CHIP_BLOCK_SIZES, BlockSizes(), device_kind)


def _fit_block(block: int, length: int) -> int:
  return min(block, max(16, pl.next_power_of_2(length)))


# ----------------------------------------------------------------------------------------- kernels


def _loop_key_blocks(bk: int, kv_len: int, num_k_blocks: int, body, carry):
  """fori_loop of body(j, carry, tail) over key blocks; tail=True on blocks holding padded keys.

  Two loops, so that only the blocks at and past kv_len pay for the padding mask.
  """
  first_tail = min(kv_len // bk, num_k_blocks)
  carry = lax.fori_loop(0, first_tail, lambda j, c: body(j, c, False), carry)
  if first_tail < num_k_blocks:
    carry = lax.fori_loop(first_tail, num_k_blocks, lambda j, c: body(j, c, True), carry)
  return carry


def _valid_keys(j, bk: int, kv_len: int, mask_ref, tail: bool):
  """(1, bk) bool: keys to attend in block j, or None when all of them are."""
  valid = None if mask_ref is None else (mask_ref[pl.ds(j * bk, bk)] != 0)[None, :]
  if tail:
    in_range = (j * bk + jnp.arange(bk) < kv_len)[None, :]
    valid = in_range if valid is None else jnp.logical_and(valid, in_range)
  return valid


def _forward_kernel(q_ref, k_ref, v_ref, mask_ref, o_ref, lse_ref, *, scale: float, bk: int, kv_len: int):
  """q_ref: (bq, D); k_ref, v_ref: (Tk, D); mask_ref: (Tk,) or None; lse_ref: (bq,) base 2."""
  bq, d = q_ref.shape
  q = q_ref[...]
  qk_scale = scale * LOG2E

  def body(j, carry, tail):
    acc, m_prev, l_prev = carry
    ks = pl.ds(j * bk, bk)
    s = _dot(q, k_ref[ks, :], trans_b=True) * qk_scale  # (bq, bk) fp32
    valid = _valid_keys(j, bk, kv_len, mask_ref, tail)
    if valid is not None:
      s = jnp.where(valid, s, MASK_VALUE)
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    if valid is not None:
      p = jnp.where(valid, p, 0.0)
    v = v_ref[ks, :]
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l_prev * alpha + jnp.sum(p, axis=1)

  init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32), jnp.zeros((bq,), jnp.float32))
  acc, m, l = _loop_key_blocks(bk, kv_len, k_ref.shape[0] // bk, body, init)
  empty = l == 0.0
  l_safe = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(l_safe))


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dk_ref, dv_ref, *, scale: float, bq: int):
  """k_ref, v_ref: (bk, D); q_ref, do_ref: (Tq, D); lse_ref, delta_ref: (Tq,); mask_ref: (bk,)."""
  # Padded keys need no mask here: they only write their own dK, dV rows, which are sliced off.
  bk, d = k_ref.shape
  k, v = k_ref[...], v_ref[...]
  qk_scale = scale * LOG2E
  valid = None if mask_ref is None else (mask_ref[...] != 0)[:, None]  # (bk, 1)

  def body(i, carry):
    dk, dv = carry
    qs = pl.ds(i * bq, bq)
    q, do = q_ref[qs, :], do_ref[qs, :]
    s_t = _dot(k, q, trans_b=True) * qk_scale  # (bk, bq)
    p_t = jnp.exp2(s_t - lse_ref[qs][None, :])
    if valid is not None:
      p_t = jnp.where(valid, p_t, 0.0)
    dv = dv + _dot(p_t.astype(do.dtype), do)
    dp_t = _dot(v, do, trans_b=True)  # (bk, bq)
    ds_t = p_t * (dp_t - delta_ref[qs][None, :])
    dk = dk + _dot(ds_t.astype(q.dtype), q)
    return dk, dv

  zeros = jnp.zeros((bk, d), jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // bq, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dq_ref, *, scale: float, bk: int, kv_len: int
):
  """q_ref, do_ref: (bq, D); lse_ref, delta_ref: (bq,); k_ref, v_ref: (Tk, D); mask_ref: (Tk,)."""
  bq, d = q_ref.shape
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
  qk_scale = scale * LOG2E

  def body(j, dq, tail):
    ks = pl.ds(j * bk, bk)
    k, v = k_ref[ks, :], v_ref[ks, :]
    p = jnp.exp2(_dot(q, k, trans_b=True) * qk_scale - lse)  # (bq, bk)
    valid = _valid_keys(j, bk, kv_len, mask_ref, tail)
    if valid is not None:
      p = jnp.where(valid, p, 0.0)
    ds = p * (_dot(do, v, trans_b=True) - delta)
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _loop_key_blocks(bk, kv_len, k_ref.shape[0] // bk, body, jnp.zeros((bq, d), jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


# ------------------------------------------------------------------------------------ pallas calls


def _tile(block, seq, d):
  """BlockSpec over (B, T, N, D) for grid (seq block, b, n); block=None takes the whole sequence."""
  if block is None:
    return pl.BlockSpec((None, seq, None, d), lambda i, b, n: (b, 0, n, 0))
  return pl.BlockSpec((None, block, None, d), lambda i, b, n: (b, i, n, 0))


def _rows(block, seq):
  """BlockSpec over (B, N, T) residuals (logsumexp, delta)."""
  if block is None:
    return pl.BlockSpec((None, None, seq), lambda i, b, n: (b, n, 0))
  return pl.BlockSpec((None, None, block), lambda i, b, n: (b, n, i))


def _mask_spec(block, seq):
  if block is None:
    return pl.BlockSpec((None, seq), lambda i, b, n: (b, 0))
  return pl.BlockSpec((None, block), lambda i, b, n: (b, i))


def _call(kernel, grid, in_specs, out_specs, out_shape, args, sizes, name, interpret):
  """pallas_call that leaves the mask input out when it is None (kernels get mask_ref=None)."""
  mask_pos = len(args) - 1
  if args[-1] is None:
    base = kernel
    kernel = lambda *refs: base(*refs[:mask_pos], None, *refs[mask_pos:])
    args, in_specs = args[:-1], in_specs[:-1]
  return pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=plgpu.CompilerParams(num_warps=sizes.num_warps, num_stages=sizes.num_stages),
    interpret=interpret,
    name=name,
  )(*args)


def _forward(q, k, v, mask, *, scale, sizes, bq, bk, kv_len, interpret):
  """Padded q: (B, Tq, N, D), k/v: (B, Tk, N, D), mask: (B, Tk) int32 | None -> O, L (B, N, Tq)."""
  b, tq, n, d = q.shape
  tk = k.shape[1]
  return _call(
    functools.partial(_forward_kernel, scale=scale, bk=bk, kv_len=kv_len),
    (tq // bq, b, n),
    [_tile(bq, tq, d), _tile(None, tk, d), _tile(None, tk, d), _mask_spec(None, tk)],
    [_tile(bq, tq, d), _rows(bq, tq)],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, tq), jnp.float32)],
    [q, k, v, mask],
    sizes,
    "flash_attention_fwd",
    interpret,
  )


def _backward(q, k, v, mask, o, lse, do, *, scale, sizes, bq, bk, kv_len, interpret):
  b, tq, n, d = q.shape
  tk = k.shape[1]
  delta = jnp.einsum("btnd,btnd->bnt", o.astype(jnp.float32), do.astype(jnp.float32))
  dk, dv = _call(
    functools.partial(_dkdv_kernel, scale=scale, bq=bq),
    (tk // bk, b, n),
    [
      _tile(None, tq, d),
      _tile(bk, tk, d),
      _tile(bk, tk, d),
      _tile(None, tq, d),
      _rows(None, tq),
      _rows(None, tq),
      _mask_spec(bk, tk),
    ],
    [_tile(bk, tk, d), _tile(bk, tk, d)],
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    [q, k, v, do, lse, delta, mask],
    sizes,
    "flash_attention_dkdv",
    interpret,
  )
  dq = _call(
    functools.partial(_dq_kernel, scale=scale, bk=bk, kv_len=kv_len),
    (tq // bq, b, n),
    [
      _tile(bq, tq, d),
      _tile(None, tk, d),
      _tile(None, tk, d),
      _tile(bq, tq, d),
      _rows(bq, tq),
      _rows(bq, tq),
      _mask_spec(None, tk),
    ],
    _tile(bq, tq, d),
    jax.ShapeDtypeStruct(q.shape, q.dtype),
    [q, k, v, do, lse, delta, mask],
    sizes,
    "flash_attention_dq",
    interpret,
  )
  return dq, dk, dv


# ------------------------------------------------------------------------------------ custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, mask, sizes, blocks, interpret):
  return _flash_fwd(q, k, v, mask, sizes, blocks, interpret)[0]


def _flash_fwd(q, k, v, mask, sizes, blocks, interpret):
  scale, kv_len, bq, bk, _, _ = blocks
  o, lse = _forward(q, k, v, mask, scale=scale, sizes=sizes, bq=bq, bk=bk, kv_len=kv_len, interpret=interpret)
  return o, (q, k, v, mask, o, lse)


def _flash_bwd(sizes, blocks, interpret, residuals, do):
  scale, kv_len, _, _, bq, bk = blocks
  q, k, v, mask, o, lse = residuals
  dq, dk, dv = _backward(
    q, k, v, mask, o, lse, do, scale=scale, sizes=sizes, bq=bq, bk=bk, kv_len=kv_len, interpret=interpret
  )
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention_gpu(q, k, v, kv_mask=None, *, block_sizes: BlockSizes | None = None, interpret: bool = False):
  """Pallas Triton flash attention. q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool.

  Differentiable in q, k, v. `interpret=True` runs the kernels in Pallas interpret mode (any backend).
  """
  sizes = block_sizes or default_block_sizes()
  _, tq, _, d = q.shape
  tk = k.shape[1]
  bq_f, bk_f = _fit_block(sizes.block_q, tq), _fit_block(sizes.block_k, tk)
  bq_b, bk_b = _fit_block(sizes.block_q_bwd, tq), _fit_block(sizes.block_k_bwd, tk)
  # Powers of two: the largest block of each axis is a multiple of the others.
  tq_pad, tk_pad = round_up(tq, max(bq_f, bq_b)), round_up(tk, max(bk_f, bk_b))
  d_pad = max(16, pl.next_power_of_2(d))
  mask = None if kv_mask is None else pad_axis(kv_mask.astype(jnp.int32), 1, tk_pad)
  pad = lambda x, t: pad_axis(pad_axis(x, 1, t), 3, d_pad)
  out = _flash(
    pad(q, tq_pad), pad(k, tk_pad), pad(v, tk_pad), mask, sizes, (d**-0.5, tk, bq_f, bk_f, bq_b, bk_b), interpret
  )
  return out[:, :tq, :, :d]
