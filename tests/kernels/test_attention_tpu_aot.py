"""The Mosaic TPU kernel compiles ahead of time for a v5p slice (real Mosaic lowering via libtpu).

No TPU is needed: `jax.experimental.topologies` describes a v5p:2x2x1 slice (4 chips) and XLA's TPU
compiler builds the program. Skipped when libtpu is not installed.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from microverse_jax.kernels.attention import attention, flash_tpu

MESH_AXES = ("data", "fsdp", "tensor", "context")


@pytest.fixture(scope="module")
def v5p_devices():
  try:
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1")
  except Exception as e:  # libtpu missing or unable to describe the topology
    pytest.skip(f"no TPU compiler available: {e}")
  return topo.devices


def _mesh(devices, shape):
  return Mesh(np.array(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 4)


def _compile_attention_step(mesh, b, t, l, n, d, impl, block_sizes):
  """fwd + bwd of self-attention then masked cross-attention, bf16, tokens sharded over context."""

  def step(x, ctx, mask):
    def loss(x, ctx):
      h = attention(x, x, x, impl=impl, block_sizes=block_sizes)
      h = attention(h, ctx, ctx, kv_mask=mask, impl=impl, block_sizes=block_sizes)
      return jnp.mean(h.astype(jnp.float32) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))(x, ctx)

  tokens = NamedSharding(mesh, P(("data", "fsdp"), "context"))
  text = NamedSharding(mesh, P(("data", "fsdp")))
  args = (
    jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16, sharding=tokens),
    jax.ShapeDtypeStruct((b, l, n, d), jnp.bfloat16, sharding=text),
    jax.ShapeDtypeStruct((b, l), jnp.bool_, sharding=text),
  )
  with jax.set_mesh(mesh):
    compiled = jax.jit(step, out_shardings=(NamedSharding(mesh, P()), (tokens, text))).lower(*args).compile()
  return compiled.as_text()


def _assert_kernels_compiled(hlo: str):
  # Two attention calls, three Mosaic kernels each (forward, dK/dV, dQ).
  assert len(re.findall(r"custom_call_target=\"tpu_custom_call\"", hlo)) == 6
  for kernel in ("flash_attention_fwd", "flash_attention_dkdv", "flash_attention_dq"):
    assert kernel in hlo


def test_flash_tpu_compiles_for_v5p_with_ulysses(v5p_devices):
  """Small shapes, lengths not multiples of the blocks, mesh data=2 x context=2.

  impl="auto" on this CPU host: the mesh's devices are TPUs, so auto must pick pallas_tpu (and the
  v5p block sizes)."""
  hlo = _compile_attention_step(_mesh(v5p_devices, (2, 1, 1, 2)), 2, 1000, 300, 4, 128, "auto", None)
  _assert_kernels_compiled(hlo)
  assert "all-to-all" in hlo


@pytest.mark.heavy
def test_flash_tpu_compiles_for_v5p_at_wan_shapes(v5p_devices):
  """Wan2.1-1.3B attention: 32,760 tokens, 12 heads of 128, 512 text keys; context=4 (3 heads/chip).

  Uses the v5p entry of the per-chip block table, so its VMEM footprint is checked by Mosaic.
  The cheap variant is the test above (same kernels, small shapes).
  """
  sizes = flash_tpu.default_block_sizes(v5p_devices[0].device_kind)
  assert sizes == flash_tpu.CHIP_BLOCK_SIZES["v5"]
  hlo = _compile_attention_step(_mesh(v5p_devices, (1, 1, 1, 4)), 1, 32760, 512, 12, 128, "pallas_tpu", sizes)
  _assert_kernels_compiled(hlo)
  assert "all-to-all" in hlo


def test_wan_dit_training_step_compiles_for_v5p(v5p_devices):
  """A small WanDiT (1 layer, 4 heads of 128) training step with attention_impl="pallas_tpu":
  forward, flow-matching-style MSE, gradients, SGD update; mesh data=2 x context=2 (Ulysses)."""
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

  cfg = WanDiTConfig(
    num_heads=4,
    head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=64,
    freq_dim=64,
    ffn_dim=256,
    num_layers=1,
    rope_max_seq_len=64,
    dtype="bfloat16",
    attention_impl="pallas_tpu",
  )
  graphdef, params = nnx.split(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  mesh = _mesh(v5p_devices, (2, 1, 1, 2))
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(("data", "fsdp")))
  abstract = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  params = jax.tree.map(lambda x: abstract(x, replicated), params)
  b, f, h, w, l = 4, 3, 20, 20, 40  # 3 * 10 * 10 = 300 video tokens, 40 text keys
  inputs = (
    jax.ShapeDtypeStruct((b, f, h, w, 16), jnp.float32, sharding=batch),  # noisy latents
    jax.ShapeDtypeStruct((b,), jnp.float32, sharding=batch),  # timesteps
    jax.ShapeDtypeStruct((b, l, 64), jnp.float32, sharding=batch),  # text
    jax.ShapeDtypeStruct((b, l), jnp.bool_, sharding=batch),  # text mask
    jax.ShapeDtypeStruct((b, f, h, w, 16), jnp.float32, sharding=batch),
  )  # target velocity

  def train_step(params, latents, timesteps, context, context_mask, target):
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      pred = model(latents, timesteps, context, context_mask)
      return jnp.mean((pred - target) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

  with jax.set_mesh(mesh):
    compiled = jax.jit(train_step, donate_argnums=0).lower(params, *inputs).compile()
  hlo = compiled.as_text()
  for kernel in ("flash_attention_fwd", "flash_attention_dkdv", "flash_attention_dq"):
    assert kernel in hlo
  assert len(re.findall(r"custom_call_target=\"tpu_custom_call\"", hlo)) >= 6  # self + cross
  assert "all-to-all" in hlo  # Ulysses over context for the self-attention
  assert compiled.memory_analysis().temp_size_in_bytes > 0
