"""Analytic model FLOPs and per-device peaks for MFU (MaxDiffusion's convention).

MFU = 3 x forward matmul FLOPs per step / (step time x peak x devices). Forward matmul FLOPs count the
projections, QK^T, PV, cross-attention and FFN (2 FLOPs per multiply-add). TPU peaks are tpu_specs' table.
"""

from __future__ import annotations

import math

from microverse_jax import tpu_specs

# Peak dense bf16 FLOP/s per GPU, by a name in its device_kind (NVIDIA's H100 / H200 SXM datasheets).
GPU_PEAK_FLOPS = {"h100": 989e12, "h200": 989e12}


def dit_forward_flops(cfg, latent_shape: tuple[int, int, int], text_len: int) -> float:
  """Forward matmul FLOPs of one sample. cfg: WanDiTConfig; latent_shape: (F, H, W)."""
  e, ffn = cfg.dim, cfg.ffn_dim
  patch = math.prod(cfg.patch_size)
  t = math.prod(s // p for s, p in zip(latent_shape, cfg.patch_size))
  layer = (
    4 * t * e * e  # self-attention q, k, v, o
    + 2 * t * t * e  # QK^T and PV over video tokens
    + 2 * t * e * e  # cross-attention q, o
    + 2 * text_len * e * e  # cross-attention k, v over the text
    + 2 * t * text_len * e  # cross-attention QK^T and PV
    + 2 * t * e * ffn
  )  # FFN
  embed = t * patch * (cfg.in_channels + cfg.out_channels) * e + text_len * (cfg.text_dim + e) * e
  return 2.0 * (cfg.num_layers * layer + embed)


def train_step_flops(cfg, batch: int, latent_shape, text_len: int) -> float:
  """Model FLOPs of one training step (3 x forward: forward + backward)."""
  return 3.0 * batch * dit_forward_flops(cfg, latent_shape, text_len)


def peak_flops(device) -> float | None:
  """Peak bf16 FLOP/s of one JAX device (a TPU7x chip is two), or None when unknown (e.g. CPU)."""
  kind = getattr(device, "device_kind", "")
  tpu = tpu_specs.by_device_kind(kind)
  if tpu is not None:
    return tpu.peak_flops / tpu.devices_per_chip
  return next((peak for name, peak in GPU_PEAK_FLOPS.items() if name in kind.lower()), None)
