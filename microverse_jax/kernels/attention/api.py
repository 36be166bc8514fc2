"""One entry point for attention; implementations are selected by name.

q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool (True = attend). Returns (B, Tq, N, D).

  xla         pure jnp (reference.py); any backend
  cudnn       jax.nn.dot_product_attention(implementation="cudnn"); NVIDIA GPUs, bf16/fp16
  pallas_tpu  our flash attention, Pallas Mosaic (flash_tpu.py)
  pallas_gpu  our flash attention, Pallas Triton (flash_gpu.py)
  splash      JAX's splash attention (Pallas TPU), for comparison (splash.py)
  auto        TPU -> pallas_tpu, GPU -> cudnn for bf16/fp16 (else pallas_gpu), CPU -> xla;
              sequences shorter than one block (128) -> xla. The platform is the ambient mesh's
              (jax.set_mesh), else the default backend's: AOT compiles for a TPU topology get TPU kernels.
`interpret=True` runs the Pallas kernels in interpret mode (TPU interpret mode for Mosaic kernels),
so every kernel runs on CPU.

Under a mesh context (`jax.set_mesh(mesh)` with axes data, fsdp, tensor, context) the call is
wrapped in a shard_map: batch over (data, fsdp), heads over tensor, and Ulysses sequence parallelism
over context (context_parallel.py). Callers need no changes.
Rows whose keys are all masked return zeros in every implementation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from microverse_jax.kernels.attention import context_parallel
from microverse_jax.kernels.attention.reference import attention_reference

IMPLS = ("xla", "cudnn", "pallas_tpu", "pallas_gpu", "splash")
MIN_KERNEL_LENGTH = 128


def target_device() -> tuple[str, str]:
  """(platform, device_kind) the program is built for: the ambient mesh's devices (so that
  ahead-of-time compilation for a TPU topology from a CPU host picks TPU kernels), else the
  default backend's first device."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  if device is None:
    device = jax.devices()[0]
  platform = "gpu" if device.platform in ("cuda", "rocm") else device.platform
  return platform, device.device_kind


def resolve_impl(impl: str, q, k, platform: str | None = None) -> str:
  """The implementation `impl` names; for "auto", the one that suits the platform and lengths."""
  if impl not in IMPLS + ("auto",):
    raise ValueError(f"attention impl={impl!r}; expected one of {IMPLS + ('auto',)}")
  if impl != "auto":
    return impl
  platform = platform or target_device()[0]
  if min(q.shape[1], k.shape[1]) < MIN_KERNEL_LENGTH or platform == "cpu":
    return "xla"
  if platform == "tpu":
    return "pallas_tpu"
  if platform == "gpu":
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    return "cudnn" if half and q.shape[-1] <= 128 else "pallas_gpu"
  return "xla"


def _check_inputs(q, k, v, kv_mask):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention: q, k, v must be (B, T, N, D); got {q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(
      f"attention: expected q (B, Tq, N, D) and k, v (B, Tk, N, D) with equal B, N, D; "
      f"got q {q.shape}, k {k.shape}, v {v.shape}"
    )
  if kv_mask is not None and (kv_mask.shape != k.shape[:2] or kv_mask.dtype != jnp.bool_):
    raise ValueError(f"attention: kv_mask must be bool (B, Tk) = {k.shape[:2]}; got {kv_mask.dtype} {kv_mask.shape}")


def _cudnn(q, k, v, kv_mask):
  # cuDNN takes a mask only at its full (B, 1, Tq, Tk) size (a (B, 1, 1, Tk) one is refused).
  mask = (
    None if kv_mask is None else jnp.broadcast_to(kv_mask[:, None, None, :], (q.shape[0], 1, q.shape[1], k.shape[1]))
  )
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  if kv_mask is None:
    return out
  return jnp.where(jnp.any(kv_mask, axis=1)[:, None, None, None], out, 0).astype(q.dtype)


def _local_attention(q, k, v, kv_mask, *, impl: str, interpret: bool, block_sizes, device_kind):
  """Attention on the arrays as given (no mesh handling)."""
  if impl == "xla":
    return attention_reference(q, k, v, kv_mask)
  if impl == "cudnn":
    return _cudnn(q, k, v, kv_mask)
  if impl == "pallas_tpu":
    from microverse_jax.kernels.attention import flash_tpu

    sizes = block_sizes or flash_tpu.default_block_sizes(device_kind)
    return flash_tpu.flash_attention_tpu(q, k, v, kv_mask, block_sizes=sizes, interpret=interpret)
  if impl == "pallas_gpu":
    from microverse_jax.kernels.attention import flash_gpu

    sizes = block_sizes or flash_gpu.default_block_sizes(device_kind)
    return flash_gpu.flash_attention_gpu(q, k, v, kv_mask, block_sizes=sizes, interpret=interpret)
  if impl == "splash":
    from microverse_jax.kernels.attention.splash import splash_attention

    return splash_attention(q, k, v, kv_mask, block_sizes=block_sizes, interpret=interpret)
  raise ValueError(f"attention impl={impl!r}; expected one of {IMPLS}")


def attention(q, k, v, *, kv_mask=None, impl: str = "auto", interpret: bool = False, block_sizes=None):
  """Multi-head attention. q: (B, Tq, N, D); k, v: (B, Tk, N, D); kv_mask: (B, Tk) bool.

  `block_sizes` (optional) is the chosen kernel's BlockSizes (flash_tpu, flash_gpu or splash);
  by default the Pallas kernels take their table's sizes for the target chip (the mesh's devices,
  else the local ones). Returns (B, Tq, N, D) in q's dtype.
  """
  _check_inputs(q, k, v, kv_mask)
  platform, device_kind = target_device()
  impl = resolve_impl(impl, q, k, platform)
  local = functools.partial(
    _local_attention, impl=impl, interpret=interpret, block_sizes=block_sizes, device_kind=device_kind
  )
  mesh = jax.sharding.get_abstract_mesh()
  if context_parallel.should_shard(mesh):
    return context_parallel.sharded_attention(local, q, k, v, kv_mask, mesh)
  return local(q, k, v, kv_mask)
