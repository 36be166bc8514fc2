"""Flash attention for TPU: Pallas Mosaic kernels, forward and backward (custom VJP).

q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool (True = attend). Returns (B, Tq, N, D).

The wrapper moves heads in front of tokens (B, N, T, D), pads Tq and Tk up to the block sizes (only
the key blocks holding padded keys pay for masking them; padded queries are sliced off) and runs
three kernels:
  forward   grid (B, N, Tq/bq, Tk/bk): online softmax in fp32 over key blocks, writes O and the
            logsumexp L (the only residual besides q, k, v, O).
  dK, dV    grid (B, N, Tk/bk, Tq/bq): works on the transposed scores S^T = K Q^T (bk, bq), so that L
            and delta = rowsum(dO * O) are lane rows and every matmul is a plain or NT product.
  dQ        grid (B, N, Tq/bq, Tk/bk): recomputes P per block and accumulates dS K.
The last grid axis is the reduction ("arbitrary"); accumulators live in VMEM scratch.
Rows whose keys are all masked return zeros (as the reference does) and get zero gradients.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from microverse_jax.kernels.attention.common import lookup_block_sizes, pad_axis, round_up

MASK_VALUE = -1e30  # finite: fully masked blocks keep exp(m_prev - m_new) well defined
LANES = 128
NT = (((1,), (1,)), ((), ()))  # contract the last dims: A @ B^T


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes along tokens. block_q/block_k for the forward, *_bwd for both backward kernels.

  Multiples of 128 (the lane width). Lengths shorter than a block shrink the block to the length
  rounded up to 128; see _fit_blocks.
  """

  block_q: int = 512
  block_k: int = 512
  block_q_bwd: int = 256
  block_k_bwd: int = 512

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if value <= 0 or value % LANES:
        raise ValueError(f"flash_tpu.BlockSizes.{name}={value}: expected a positive multiple of {LANES}")


# Starting points per chip (device_kind substring -> sizes). Untuned on hardware: override per run.
CHIP_BLOCK_SIZES = {
  "v4": BlockSizes(512, 512, 256, 512),
  "v5 lite": BlockSizes(512, 512, 256, 256),  # v5e: less VMEM per core
  "v5e": BlockSizes(512, 512, 256, 256),
  "v5p": BlockSizes(512, 1024, 256, 512),
  "v5": BlockSizes(512, 1024, 256, 512),
  "v6": BlockSizes(512, 1024, 512, 512),
}


def default_block_sizes(device_kind: str | None = None) -> BlockSizes:
  """Block sizes for a TPU `device_kind` (e.g. "TPU v5p"); the local device's when None."""
  return lookup_block_sizes(CHIP_BLOCK_SIZES, BlockSizes(), device_kind)


def _fit_blocks(length: int, *blocks: int) -> tuple[int, ...]:
  """(padded length, *blocks) for one sequence axis: blocks shrink to the length (rounded up to
  128), the length is padded to the largest block, and any other block that does not divide the
  padded length drops to the largest multiple of 128 that does."""
  blocks = tuple(min(b, round_up(length, LANES)) for b in blocks)
  padded = round_up(length, max(blocks))
  fitted = []
  for b in blocks:
    while padded % b:
      b -= LANES
    fitted.append(b)
  return (padded, *fitted)


# ----------------------------------------------------------------------------------------- kernels


def _for_key_block(kj, bk: int, kv_len: int, num_k_blocks: int, step):
  """Runs step(tail) for key block kj; tail=True on blocks holding padded keys (index >= kv_len).

  Only those blocks pay for the padding mask: two pl.when branches, resolved per grid step.
  """
  first_tail = kv_len // bk
  if first_tail >= num_k_blocks:
    step(False)
    return
  pl.when(kj < first_tail)(lambda: step(False))
  pl.when(kj >= first_tail)(lambda: step(True))


def _valid_keys(kj, bk: int, kv_len: int, mask_row, tail: bool):
  """(1, bk) bool: keys to attend in block kj, or None when all of them are."""
  valid = None if mask_row is None else mask_row != 0
  if tail:
    in_range = kj * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1) < kv_len
    valid = in_range if valid is None else jnp.logical_and(valid, in_range)
  return valid


def _forward_kernel(*refs, scale: float, has_mask: bool, kv_len: int, num_k_blocks: int):
  if has_mask:
    q_ref, k_ref, v_ref, mask_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    mask_ref = None
  kj = pl.program_id(3)
  bk = k_ref.shape[0]

  @pl.when(kj == 0)
  def _init():
    m_scr[...] = jnp.full_like(m_scr, MASK_VALUE)
    l_scr[...] = jnp.zeros_like(l_scr)
    acc_scr[...] = jnp.zeros_like(acc_scr)

  def step(tail: bool):
    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # (bq, D), (bk, D)
    s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale  # (bq, bk)
    valid = _valid_keys(kj, bk, kv_len, None if mask_ref is None else mask_ref[...], tail)
    if valid is not None:
      s = jnp.where(valid, s, MASK_VALUE)
    m_prev = m_scr[...]  # (bq, 1)
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new)
    if valid is not None:
      p = jnp.where(valid, p, 0.0)
    l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_scr[...] = alpha * acc_scr[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_scr[...] = m_new

  _for_key_block(kj, bk, kv_len, num_k_blocks, step)

  @pl.when(kj == num_k_blocks - 1)
  def _finish():
    l = l_scr[...]
    empty = l == 0.0
    o_ref[...] = (acc_scr[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
    # +inf for rows without keys: exp(s - lse) = 0 in the backward.
    lse = jnp.where(empty, jnp.inf, m_scr[...] + jnp.log(jnp.where(empty, 1.0, l)))  # (bq, 1)
    # Stored as a lane row (1, bq): a (bq, 128) broadcast, one XLU transpose, its first row.
    lse_ref[...] = jnp.broadcast_to(lse, (lse.shape[0], LANES)).T[:1]


def _dkdv_kernel(*refs, scale: float, has_mask: bool, num_q_blocks: int):
  if has_mask:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dk_ref, dv_ref, dk_scr, dv_scr) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
  qi = pl.program_id(3)

  @pl.when(qi == 0)
  def _init():
    dk_scr[...] = jnp.zeros_like(dk_scr)
    dv_scr[...] = jnp.zeros_like(dv_scr)

  # Padded keys need no mask here: they only write their own dK, dV rows, which are sliced off.
  q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
  s_t = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * scale  # (bk, bq)
  p_t = jnp.exp(s_t - lse_ref[...])  # lse: (1, bq)
  if has_mask:
    valid = jnp.expand_dims(mask_ref[0], -1) != 0  # (bk, 1)
    p_t = jnp.where(valid, p_t, 0.0)
  dv_scr[...] += jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
  dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)  # (bk, bq)
  ds_t = p_t * (dp_t - delta_ref[...])
  dk_scr[...] += jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32)

  @pl.when(qi == num_q_blocks - 1)
  def _finish():
    dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, scale: float, has_mask: bool, kv_len: int, num_k_blocks: int):
  if has_mask:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dq_ref, dq_scr = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_scr = refs
    mask_ref = None
  kj = pl.program_id(3)
  bk = k_ref.shape[0]

  @pl.when(kj == 0)
  def _init():
    dq_scr[...] = jnp.zeros_like(dq_scr)

  def step(tail: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale  # (bq, bk)
    p = jnp.exp(s - jnp.expand_dims(lse_ref[0], -1))  # lse: (bq, 1)
    valid = _valid_keys(kj, bk, kv_len, None if mask_ref is None else mask_ref[...], tail)
    if valid is not None:
      p = jnp.where(valid, p, 0.0)
    dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
    ds = p * (dp - jnp.expand_dims(delta_ref[0], -1))
    dq_scr[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  _for_key_block(kj, bk, kv_len, num_k_blocks, step)

  @pl.when(kj == num_k_blocks - 1)
  def _finish():
    dq_ref[...] = (dq_scr[...] * scale).astype(dq_ref.dtype)


# ------------------------------------------------------------------------------------ pallas calls


def _params(interpret: bool):
  return dict(
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
    interpret=pltpu.InterpretParams() if interpret else False,
  )


def _forward(q, k, v, mask, *, scale, bq, bk, kv_len, interpret):
  """q: (B, N, Tq, D), k/v: (B, N, Tk, D), mask: (B, 1, Tk) int32 or None -> O, L (B, N, 1, Tq)."""
  b, n, tq, d = q.shape
  tk = k.shape[2]
  nq, nk = tq // bq, tk // bk
  q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, d), lambda b_, h, i, j: (b_, h, j, 0))
  in_specs = [q_spec, kv_spec, kv_spec]
  args = [q, k, v]
  if mask is not None:
    in_specs.append(pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, j)))
    args.append(mask)
  kernel = functools.partial(_forward_kernel, scale=scale, has_mask=mask is not None, kv_len=kv_len, num_k_blocks=nk)
  o, lse = pl.pallas_call(
    kernel,
    grid=(b, n, nq, nk),
    in_specs=in_specs,
    out_specs=[q_spec, pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j: (b_, h, 0, i))],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, 1, tq), jnp.float32)],
    scratch_shapes=[
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, d), jnp.float32),
    ],
    name="flash_attention_fwd",
    **_params(interpret),
  )(*args)
  return o, lse


def _backward(q, k, v, mask, o, lse, do, *, scale, bq, bk, kv_len, interpret):
  """Gradients for padded (B, N, T, D) inputs; lse: (B, N, 1, Tq)."""
  b, n, tq, d = q.shape
  tk = k.shape[2]
  nq, nk = tq // bq, tk // bk
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)[:, :, None, :]
  has_mask = mask is not None

  # dK, dV: grid (B, N, key block j, query block i).
  q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, j, i: (b_, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, d), lambda b_, h, j, i: (b_, h, j, 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b_, h, j, i: (b_, h, 0, i))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  args = [q, k, v, do, lse, delta]
  if has_mask:
    in_specs.append(pl.BlockSpec((None, 1, bk), lambda b_, h, j, i: (b_, 0, j)))
    args.append(mask)
  dk, dv = pl.pallas_call(
    functools.partial(_dkdv_kernel, scale=scale, has_mask=has_mask, num_q_blocks=nq),
    grid=(b, n, nk, nq),
    in_specs=in_specs,
    out_specs=[kv_spec, kv_spec],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
    name="flash_attention_dkdv",
    **_params(interpret),
  )(*args)

  # dQ: grid (B, N, query block i, key block j).
  q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, d), lambda b_, h, i, j: (b_, h, j, 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j: (b_, h, 0, i))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  args = [q, k, v, do, lse, delta]
  if has_mask:
    in_specs.append(pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, j)))
    args.append(mask)
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, scale=scale, has_mask=has_mask, kv_len=kv_len, num_k_blocks=nk),
    grid=(b, n, nq, nk),
    in_specs=in_specs,
    out_specs=q_spec,
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
    name="flash_attention_dq",
    **_params(interpret),
  )(*args)
  return dq, dk, dv


# ------------------------------------------------------------------------------------ custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, mask, sizes, interpret):
  return _flash_fwd(q, k, v, mask, sizes, interpret)[0]


def _flash_fwd(q, k, v, mask, sizes, interpret):
  scale, kv_len, bq, bk, _, _ = sizes
  o, lse = _forward(q, k, v, mask, scale=scale, bq=bq, bk=bk, kv_len=kv_len, interpret=interpret)
  return o, (q, k, v, mask, o, lse)


def _flash_bwd(sizes, interpret, residuals, do):
  scale, kv_len, _, _, bq, bk = sizes
  q, k, v, mask, o, lse = residuals
  dq, dk, dv = _backward(q, k, v, mask, o, lse, do, scale=scale, bq=bq, bk=bk, kv_len=kv_len, interpret=interpret)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention_tpu(q, k, v, kv_mask=None, *, block_sizes: BlockSizes | None = None, interpret: bool = False):
  """Pallas Mosaic flash attention. q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool.

  Differentiable in q, k, v. `interpret=True` runs the kernels in TPU interpret mode (on any backend).
  """
  sizes = block_sizes or default_block_sizes()
  _, tq, _, d = q.shape
  tk = k.shape[1]
  tq_pad, bq_f, bq_b = _fit_blocks(tq, sizes.block_q, sizes.block_q_bwd)
  tk_pad, bk_f, bk_b = _fit_blocks(tk, sizes.block_k, sizes.block_k_bwd)
  mask = None
  if kv_mask is not None:
    mask = pad_axis(kv_mask.astype(jnp.int32), 1, tk_pad)[:, None, :]  # (B, 1, Tk)
  to_bntd = lambda x, t: pad_axis(jnp.swapaxes(x, 1, 2), 2, t)
  out = _flash(
    to_bntd(q, tq_pad), to_bntd(k, tk_pad), to_bntd(v, tk_pad), mask, (d**-0.5, tk, bq_f, bk_f, bq_b, bk_b), interpret
  )
  return jnp.swapaxes(out[:, :, :tq], 1, 2)
