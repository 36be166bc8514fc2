"""Each attention kernel vs the pure-jnp reference, forward and gradients (CPU, interpret mode).

Tolerances (max abs error; inputs ~N(0, 1), cotangents ~N(0, 1)):
  fp32: output 1e-5, gradients 5e-5 (observed ~1e-6).
  bf16: both sides take the same bf16 inputs; output and gradients 1.5e-2 (observed ~4e-3, about one
        bf16 ulp at magnitude 1; the kernel rounds P to bf16 per key block, the reference once).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microverse_jax.kernels.attention import api, attention, attention_reference, flash_gpu, flash_tpu

# name: (B, Tq, Tk, N, D, dtype, mask kind)
CASES = {
  "self_nonmultiple_fp32": (1, 200, 200, 2, 32, jnp.float32, None),
  "cross_masked_fp32": (2, 136, 77, 2, 64, jnp.float32, "padding"),  # example 1: all keys masked
  "self_masked_bf16": (1, 160, 160, 2, 64, jnp.bfloat16, "random"),
}
TOLERANCES = {jnp.float32: (1e-5, 5e-5), jnp.bfloat16: (1.5e-2, 1.5e-2)}
# Small blocks so that the fp32 cases span several query and key blocks (and padding); the bf16
# case runs with the default (large) blocks, which shrink to its short lengths.
KERNEL_BLOCKS = {
  "pallas_tpu": flash_tpu.BlockSizes(128, 128, 128, 128),
  "pallas_gpu": flash_gpu.BlockSizes(64, 32, 32, 64),
}


def _inputs(case):
  """q, k, v, output cotangent and key mask (numpy-made: no eager XLA compiles)."""
  b, tq, tk, n, d, dtype, mask_kind = CASES[case]
  rng = np.random.default_rng(len(case))
  normal = lambda t: jnp.asarray(rng.standard_normal((b, t, n, d), np.float32).astype(dtype))
  q, k, v, do = normal(tq), normal(tk), normal(tk), normal(tq)
  mask = None
  if mask_kind == "padding":  # text keys: a valid prefix per example; example 1 has none
    lengths = np.array([50] + [0] * (b - 1))
    mask = jnp.asarray(np.arange(tk)[None, :] < lengths[:, None])
  elif mask_kind == "random":
    mask = jnp.asarray(rng.uniform(size=(b, tk)) > 0.3)
  return q, k, v, do, mask


def _value_and_grads(fn, q, k, v, do, mask):
  def run(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
    return out, vjp(do)

  return jax.jit(run)(q, k, v)


def _max_err(a, b):
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_flash_kernel_vs_reference(impl, case):
  q, k, v, do, mask = _inputs(case)
  blocks = None if q.dtype == jnp.bfloat16 else KERNEL_BLOCKS[impl]
  out, grads = _value_and_grads(
    lambda q, k, v, m: attention(q, k, v, kv_mask=m, impl=impl, interpret=True, block_sizes=blocks), q, k, v, do, mask
  )
  ref_out, ref_grads = _value_and_grads(attention_reference, q, k, v, do, mask)
  out_tol, grad_tol = TOLERANCES[q.dtype.type]
  assert out.dtype == q.dtype and out.shape == q.shape
  assert _max_err(out, ref_out) < out_tol
  for name, g, rg in zip("qkv", grads, ref_grads):
    assert g.dtype == q.dtype and g.shape == rg.shape
    assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))), f"d{name} not finite"
    assert _max_err(g, rg) < grad_tol, f"d{name}: {_max_err(g, rg)}"
  if case == "cross_masked_fp32":  # an example without keys: zero output, zero gradients
    assert float(jnp.max(jnp.abs(out[1]))) == 0.0
    assert float(jnp.max(jnp.abs(grads[0][1]))) == 0.0
    # Masked keys get no gradient.
    assert float(jnp.max(jnp.abs(grads[1][0, 50:]))) == 0.0
    assert float(jnp.max(jnp.abs(grads[2][0, 50:]))) == 0.0


def test_splash_vs_reference():
  q, k, v, do, mask = _inputs("cross_masked_fp32")
  out, grads = _value_and_grads(
    lambda q, k, v, m: attention(q, k, v, kv_mask=m, impl="splash", interpret=True), q, k, v, do, mask
  )
  ref_out, ref_grads = _value_and_grads(attention_reference, q, k, v, do, mask)
  assert _max_err(out, ref_out) < 1e-5
  for g, rg in zip(grads, ref_grads):
    assert _max_err(g, rg) < 5e-5


def test_block_size_tables():
  assert flash_tpu.default_block_sizes("TPU v5p") == flash_tpu.CHIP_BLOCK_SIZES["v5p"]
  assert flash_tpu.default_block_sizes("TPU v5 lite") == flash_tpu.CHIP_BLOCK_SIZES["v5 lite"]
  assert flash_tpu.default_block_sizes("cpu") == flash_tpu.BlockSizes()
  assert flash_gpu.default_block_sizes("NVIDIA H100 80GB HBM3") == flash_gpu.CHIP_BLOCK_SIZES["h100"]
  with pytest.raises(ValueError, match="block_k=100"):
    flash_tpu.BlockSizes(block_k=100)
  with pytest.raises(ValueError, match="block_q=96"):
    flash_gpu.BlockSizes(block_q=96)


def test_tpu_block_fitting():
  """(padded length, fitted blocks): every block divides the padded length."""
  assert flash_tpu._fit_blocks(32760, 512, 256) == (32768, 512, 256)  # Wan: 8 padded tokens
  assert flash_tpu._fit_blocks(300, 512, 256) == (384, 384, 128)
  assert flash_tpu._fit_blocks(77, 512, 512) == (128, 128, 128)
  assert flash_tpu._fit_blocks(1000, 640, 512) == (1280, 640, 256)


def test_dispatch_and_input_errors():
  q, k, v, _, mask = _inputs("cross_masked_fp32")
  assert api.resolve_impl("auto", q, k) == "xla"  # CPU
  assert api.resolve_impl("pallas_gpu", q, k) == "pallas_gpu"
  np.testing.assert_array_equal(attention(q, k, v, kv_mask=mask), attention_reference(q, k, v, mask))
  with pytest.raises(ValueError, match="impl='flash'"):
    attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="kv_mask must be bool"):
    attention(q, k, v, kv_mask=mask.astype(jnp.int32))
  with pytest.raises(ValueError, match="kv_mask must be bool"):
    attention(q, k, v, kv_mask=mask[:, :10])
  with pytest.raises(ValueError, match="equal B, N, D"):
    attention(q, k[..., :16], v[..., :16])


def test_gpu_kernel_lowers_to_triton():
  """The Triton lowering (done by JAX, not XLA) succeeds for CUDA: three kernels for fwd + bwd."""
  q = jax.ShapeDtypeStruct((1, 1100, 2, 128), jnp.bfloat16)  # pads to 1152, not a power of 2
  k = jax.ShapeDtypeStruct((1, 300, 2, 128), jnp.bfloat16)
  mask = jax.ShapeDtypeStruct((1, 300), jnp.bool_)

  def fwd_bwd(q, k, v, mask):
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, kv_mask=mask, impl="pallas_gpu").astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  text = jax.jit(fwd_bwd).trace(q, k, k, mask).lower(lowering_platforms=("cuda",)).as_text()
  names = re.findall(r'name = "(flash_attention_\w+)"', text)
  assert sorted(set(names)) == ["flash_attention_dkdv", "flash_attention_dq", "flash_attention_fwd"]


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_vs_reference():
  q, k, v, do, mask = _inputs("self_masked_bf16")
  out, grads = _value_and_grads(lambda q, k, v, m: attention(q, k, v, kv_mask=m, impl="cudnn"), q, k, v, do, mask)
  ref_out, ref_grads = _value_and_grads(attention_reference, q, k, v, do, mask)
  assert _max_err(out, ref_out) < 1.5e-2
  for g, rg in zip(grads, ref_grads):
    assert _max_err(g, rg) < 1.5e-2


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Triton kernels need a GPU")
@pytest.mark.parametrize("case", list(CASES))
def test_pallas_gpu_compiled_vs_reference(case):
  q, k, v, do, mask = _inputs(case)
  out, grads = _value_and_grads(lambda q, k, v, m: attention(q, k, v, kv_mask=m, impl="pallas_gpu"), q, k, v, do, mask)
  ref_out, ref_grads = _value_and_grads(attention_reference, q, k, v, do, mask)
  out_tol, grad_tol = TOLERANCES[q.dtype.type]
  # fp32 dots run as TF32 on tensor cores: allow bf16-like error for fp32 too.
  out_tol, grad_tol = max(out_tol, 1.5e-2), max(grad_tol, 1.5e-2)
  assert _max_err(out, ref_out) < out_tol
  for g, rg in zip(grads, ref_grads):
    assert _max_err(g, rg) < grad_tol


def _tiny_dit_and_inputs(impl, abstract=False):
  """A one-layer tiny WanDiT (as graphdef, state; state of ShapeDtypeStructs when `abstract`)."""
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

  make = lambda: WanDiT(WanDiTConfig.preset("tiny", num_layers=1, attention_impl=impl), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(nnx.eval_shape(make) if abstract else make())
  rng = np.random.default_rng(1)  # numpy inputs: no eager XLA compiles
  latents = rng.standard_normal((2, 2, 8, 8, 4), np.float32)  # 2 * 4 * 4 = 32 video tokens
  context = rng.standard_normal((2, 10, 32), np.float32)
  context_mask = np.arange(10)[None, :] < np.array([[7], [3]])
  run = lambda state, *inputs: nnx.merge(graphdef, state)(*inputs)
  return run, state, (latents, np.array([100.0, 900.0], np.float32), context, context_mask)


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_wan_dit_traces_the_configured_kernel(impl):
  """The DiT's config picks the kernel: its self- and cross-attention trace to pallas_calls."""
  run, state, inputs = _tiny_dit_and_inputs(impl, abstract=True)
  jaxpr = str(jax.make_jaxpr(run)(state, *inputs))
  assert len(re.findall(r"name=flash_attention_fwd", jaxpr)) == 2  # self + cross
  run, state, inputs = _tiny_dit_and_inputs("xla", abstract=True)
  assert "pallas_call" not in str(jax.make_jaxpr(run)(state, *inputs))


@pytest.mark.heavy
def test_wan_dit_with_pallas_tpu_matches_xla():
  """WanDiT(attention_impl="pallas_tpu"), run in TPU interpret mode, equals attention_impl="xla".
  Cheap variant: test_wan_dit_traces_the_configured_kernel."""
  from jax.experimental.pallas import tpu as pltpu

  run, state, inputs = _tiny_dit_and_inputs("pallas_tpu")
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    out = jax.jit(run)(state, *inputs)
  run_xla, _, _ = _tiny_dit_and_inputs("xla", abstract=True)  # same parameters, other impl
  np.testing.assert_allclose(out, jax.jit(run_xla)(state, *inputs), atol=2e-5, rtol=2e-5)
