"""Wan2.1 and Wan2.2 VAEs: causal 3-D convolutional autoencoders, in Flax NNX.

Axis letters: B batch, F frames, H W height/width, C channels (channels-last throughout);
s = spatial factor (8 for Wan2.1, 16 for Wan2.2), t = temporal factor (4), z = latent channels (16, 48).

  video (B, F, H, W, 3) in [-1, 1], F = 1 + k*t
    --encode--> latent mean (B, 1 + (F-1)/t, H/s, W/s, z)
  latents (B, F', h, w, z) --decode--> video (B, 1 + (F'-1)*t, h*s, w*s, 3), clipped to [-1, 1]

Time is causal: output frame i of every layer depends on input frames <= i only. Both directions
run chunk by chunk under `jax.lax.scan` (the first frame alone, then `encode_chunk_frames` video
frames / `decode_chunk_latents` latent frames per step). Each causal layer carries the last input
frames it saw (`_CausalCache`), so activation memory is that of one chunk whatever F, and the
result equals the PyTorch reference's feature-cache loop exactly.

Wan2.2 (`is_residual=True, patch_size=2`, preset "wan2.2") is the same network with a 2x2 patchify
around it and parameter-free shortcuts around every stage; those pieces live in `wan_vae22`.

Sharding: the VAE (127M parameters; Wan2.2's 705M) is replicated: every parameter carries logical axis names,
all None. It shards through activations: 'batch', and optionally the rows of every frame under
the logical name `spatial_axis` (e.g. 'tokens' puts H on the context mesh axis; XLA adds the
convolution halos). The checkpoint key mappings (diffusers, original Wan2.1 / Wan2.2) are at the
bottom; the loaders are in `microverse_jax.convert`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax import sharding
from microverse_jax.models import wan_vae22
from microverse_jax.models.layers import param

# fmt: off
WAN21_LATENTS_MEAN = (
  -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
  2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# fmt: on


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  base_dim: int = 96
  decoder_base_dim: int | None = None  # None = base_dim (Wan2.2: 256 against the encoder's 160)
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  is_residual: bool = False  # Wan2.2: parameter-free shortcuts around every stage
  patch_size: int = 1  # Wan2.2: 2 (pixels p x p are folded into channels before the encoder)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  # Beyond the architecture: how to run it.
  dtype: str = "float32"  # compute dtype; parameters stay fp32, norms compute in fp32
  encode_chunk_frames: int = 0  # video frames per encode step after the first; 0 = temporal factor
  decode_chunk_latents: int = 1  # latent frames per decode step after the first
  spatial_axis: str | None = None  # logical axis for the rows (H) of activations, e.g. "tokens"
  tile_sample_size: int = 256  # tiled decode: tile edge in pixels
  tile_sample_stride: int = 192  # tiled decode: pixels between tile starts (overlap is blended)

  def __post_init__(self):
    for name, v in (
      ("dim_mult", self.dim_mult),
      ("temporal_downsample", self.temporal_downsample),
      ("latents_mean", self.latents_mean),
      ("latents_std", self.latents_std),
    ):
      object.__setattr__(self, name, tuple(v))
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
        f"WanVAEConfig: temporal_downsample {self.temporal_downsample} needs "
        f"len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries"
      )
    for name in ("latents_mean", "latents_std"):
      if len(getattr(self, name)) != self.z_dim:
        raise ValueError(f"WanVAEConfig: {name} has {len(getattr(self, name))} entries, z_dim={self.z_dim}")
    if self.patch_size < 1:
      raise ValueError(f"WanVAEConfig: patch_size={self.patch_size} must be >= 1")
    if self.encode_chunk_frames % self.temporal_factor:
      raise ValueError(
        f"WanVAEConfig: encode_chunk_frames={self.encode_chunk_frames} must be a multiple "
        f"of the temporal factor {self.temporal_factor}"
      )
    if self.decode_chunk_latents < 1 or not 0 < self.tile_sample_stride <= self.tile_sample_size:
      raise ValueError(
        "WanVAEConfig: decode_chunk_latents >= 1 and 0 < tile_sample_stride <= "
        f"tile_sample_size required, got {self.decode_chunk_latents}, "
        f"{self.tile_sample_stride}, {self.tile_sample_size}"
      )

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1) * self.patch_size

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(map(bool, self.temporal_downsample))

  @classmethod
  def preset(cls, name: str, **overrides) -> "WanVAEConfig":
    """Named sizes: "wan2.1", "wan2.2" (the released VAEs; Wan2.2's is TI2V-5B's, 16x16x4 to 48
    channels), "tiny" and "tiny-wan2.2" (CPU tests: 4x/2x and 16x/4x spatial/temporal)."""
    tiny = dict(z_dim=4, num_res_blocks=1, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    presets = {
      "wan2.1": {},
      "wan2.2": wan_vae22.WAN22_PRESET,
      "tiny": dict(tiny, base_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(False, True)),
      "tiny-wan2.2": {**wan_vae22.WAN22_PRESET, **tiny, "base_dim": 4, "decoder_base_dim": 6},
    }
    if name.lower() not in presets:
      raise ValueError(f"unknown WanVAE preset {name!r}; expected one of {sorted(presets)}")
    return cls(**{**presets[name.lower()], **overrides})


class _CausalCache:
  """The last input frames of every causal layer, read and written in call order for one chunk.

  `prev` is the previous chunk's list (None on the first chunk: no history, i.e. zero padding);
  each causal layer calls `read()` then `write(frames)` exactly once per chunk.
  """

  def __init__(self, prev: list[jax.Array] | None = None):
    self.prev, self.new = prev, []

  @property
  def first(self) -> bool:
    return self.prev is None

  def read(self) -> jax.Array | None:
    return None if self.prev is None else self.prev[len(self.new)]

  def write(self, frames: jax.Array) -> None:
    self.new.append(frames)


class _Conv(nnx.Module):
  """Convolution of (B, F, H, W, Ci) with a (kt, kh, kw, Ci, Co) or 2-D (kh, kw, Ci, Co) kernel, no padding."""

  def __init__(self, cin: int, cout: int, kernel_size: tuple[int, ...], *, rngs: nnx.Rngs, dtype):
    shape = (*kernel_size, cin, cout)
    self.kernel = param(rngs, nnx.initializers.lecun_normal(), shape, (None,) * len(shape))
    self.bias = param(rngs, nnx.initializers.zeros, (cout,), (None,))
    self.dtype = dtype

  def __call__(self, x, stride=(1, 1, 1), pad_hw: int = 0):
    kernel = self.kernel[...]
    kernel = kernel[None] if kernel.ndim == 4 else kernel
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      window_strides=stride,
      padding=((0, 0), (pad_hw, pad_hw), (pad_hw, pad_hw)),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    return y + self.bias[...].astype(self.dtype)


class _CausalConv3d(_Conv):
  """k x k x k convolution, 'same' in space and causal in time (history from the cache)."""

  def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, dtype):
    super().__init__(cin, cout, (k, k, k), rngs=rngs, dtype=dtype)
    self.k = k

  def __call__(self, x, cache: _CausalCache):
    if self.k > 1:
      prev = cache.read()
      if prev is None:
        prev = jnp.zeros((x.shape[0], self.k - 1, *x.shape[2:]), x.dtype)
      x = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
      cache.write(x[:, -(self.k - 1) :])
    return super().__call__(x, pad_hw=self.k // 2)


class _RMSNorm(nnx.Module):
  """x / ||x||_2 * sqrt(C) * gamma over channels (Wan's RMS_norm), computed in fp32."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.gamma = param(rngs, nnx.initializers.ones, (dim,), (None,))
    self.scale = dim**0.5

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    return (xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...]).astype(x.dtype)


class _ResidualBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype):
    self.norm1 = _RMSNorm(cin, rngs=rngs)
    self.conv1 = _CausalConv3d(cin, cout, 3, rngs=rngs, dtype=dtype)
    self.norm2 = _RMSNorm(cout, rngs=rngs)
    self.conv2 = _CausalConv3d(cout, cout, 3, rngs=rngs, dtype=dtype)
    self.conv_shortcut = _Conv(cin, cout, (1, 1, 1), rngs=rngs, dtype=dtype) if cin != cout else None

  def __call__(self, x, cache: _CausalCache):
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    x = self.conv1(jax.nn.silu(self.norm1(x)), cache)
    x = self.conv2(jax.nn.silu(self.norm2(x)), cache)
    return x + shortcut


class _AttentionBlock(nnx.Module):
  """Single-head self-attention over the H*W positions of each frame, with a residual."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
    self.norm = _RMSNorm(dim, rngs=rngs)
    self.to_qkv = _Conv(dim, 3 * dim, (1, 1), rngs=rngs, dtype=dtype)
    self.proj = _Conv(dim, dim, (1, 1), rngs=rngs, dtype=dtype)

  def __call__(self, x):
    b, f, h, w, c = x.shape
    q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b * f, h * w, 1, 3 * c), 3, axis=-1)
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, f, h, w, c)
    return x + self.proj(out)


class _MidBlock(nnx.Module):
  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
    self.resnets = nnx.List([_ResidualBlock(dim, dim, rngs=rngs, dtype=dtype) for _ in range(2)])
    self.attention = _AttentionBlock(dim, rngs=rngs, dtype=dtype)

  def __call__(self, x, cache: _CausalCache):
    x = self.attention(self.resnets[0](x, cache))
    return self.resnets[1](x, cache)


class _Resample(nnx.Module):
  """2x spatial down/up-sampling ("down2d", "up2d"), with 2x causal temporal ("down3d", "up3d").

  Temporal downsampling keeps frame 0 and then takes stride-2 windows (0,1,2), (2,3,4), ...;
  temporal upsampling keeps frame 0 and turns every later frame into two. Upsampling halves the
  channels (Wan2.1) unless `up_dim` says otherwise (Wan2.2 keeps them).
  """

  def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs, dtype, up_dim: int | None = None):
    self.mode = mode
    cout = (up_dim or dim // 2) if mode.startswith("up") else dim
    self.conv = _Conv(dim, cout, (3, 3), rngs=rngs, dtype=dtype)
    tdim = {"up3d": 2 * dim, "down3d": dim}.get(mode)
    self.time_conv = _Conv(dim, tdim, (3, 1, 1), rngs=rngs, dtype=dtype) if tdim else None

  def __call__(self, x, cache: _CausalCache):
    if self.mode == "up3d":
      prev = cache.read()
      if prev is None:  # the first frame is not upsampled in time; later ones see zero history
        cache.write(jnp.zeros((x.shape[0], 2, *x.shape[2:]), x.dtype))
      else:
        x = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
        cache.write(x[:, -2:])
        y = self.time_conv(x)
        b, n, h, w, c2 = y.shape
        x = y.reshape(b, n, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * n, h, w, c2 // 2)
    if self.mode.startswith("up"):
      x = self.conv(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3), pad_hw=1)
    else:
      x = self.conv(jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0))), stride=(1, 2, 2))
    if self.mode == "down3d":
      prev = cache.read()
      cache.write(x[:, -1:])
      if prev is not None:
        x = self.time_conv(jnp.concatenate([prev.astype(x.dtype), x], axis=1), stride=(2, 1, 1))
    return x


def _resample_mode(temporal: bool, direction: str) -> str:
  return f"{direction}{'3d' if temporal else '2d'}"


class _DownBlock(nnx.Module):
  """A Wan2.2 encoder stage: res blocks, an optional 2x downsampler, plus the `avg_down` shortcut."""

  def __init__(self, cin: int, cout: int, num_resnets: int, temporal: bool, down: bool, *, rngs, dtype):
    self.resnets = nnx.List(
      [_ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs, dtype=dtype) for i in range(num_resnets)]
    )
    self.downsampler = _Resample(cout, _resample_mode(temporal, "down"), rngs=rngs, dtype=dtype) if down else None
    self.cout, self.ft, self.fs = cout, (2 if temporal else 1), (2 if down else 1)
    if cin * self.ft * self.fs**2 % cout:
      raise ValueError(f"WanVAEConfig: avg-down shortcut {cin} -> {cout} channels: {cout} must divide {cin}*ft*fs*fs")

  def __call__(self, x, cache: _CausalCache):
    shortcut = wan_vae22.avg_down(x, self.cout, self.ft, self.fs)
    for block in self.resnets:
      x = block(x, cache)
    x = x if self.downsampler is None else self.downsampler(x, cache)
    return x + shortcut


class _UpBlock(nnx.Module):
  """A decoder stage: res blocks and an optional 2x upsampler; Wan2.2 (`residual`) adds the `dup_up` shortcut."""

  def __init__(self, cin: int, cout: int, num_resnets: int, mode: str | None, residual: bool, *, rngs, dtype):
    self.resnets = nnx.List(
      [_ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs, dtype=dtype) for i in range(num_resnets)]
    )
    up_dim = cout if residual else None
    self.upsampler = _Resample(cout, mode, rngs=rngs, dtype=dtype, up_dim=up_dim) if mode else None
    self.shortcut = (cout, 2 if mode == "up3d" else 1, 2) if residual and mode else None  # (cout, ft, fs)
    if self.shortcut and cout * self.shortcut[1] * 4 % cin:
      raise ValueError(f"WanVAEConfig: dup-up shortcut {cin} -> {cout} channels: {cin} must divide {cout}*ft*fs*fs")

  def __call__(self, x, cache: _CausalCache):
    x_in = x
    for block in self.resnets:
      x = block(x, cache)
    x = x if self.upsampler is None else self.upsampler(x, cache)
    if self.shortcut is not None:
      x = x + wan_vae22.dup_up(x_in, *self.shortcut, first_chunk=cache.first)
    return x


class _Encoder(nnx.Module):
  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype):
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = _CausalConv3d(3 * cfg.patch_size**2, dims[0], 3, rngs=rngs, dtype=dtype)
    blocks, last = [], len(cfg.dim_mult) - 1
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      temporal = i < last and cfg.temporal_downsample[i]
      if cfg.is_residual:
        blocks.append(_DownBlock(cin, cout, cfg.num_res_blocks, temporal, i < last, rngs=rngs, dtype=dtype))
        continue
      for _ in range(cfg.num_res_blocks):
        blocks.append(_ResidualBlock(cin, cout, rngs=rngs, dtype=dtype))
        cin = cout
      if i < last:
        blocks.append(_Resample(cout, _resample_mode(temporal, "down"), rngs=rngs, dtype=dtype))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = _MidBlock(dims[-1], rngs=rngs, dtype=dtype)
    self.norm_out = _RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = _CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, rngs=rngs, dtype=dtype)
    self.activation_axes = ("batch", None, cfg.spatial_axis, None, None)

  def __call__(self, x, cache: _CausalCache):
    x = sharding.constrain(self.conv_in(x, cache), self.activation_axes)
    for block in self.down_blocks:
      x = sharding.constrain(block(x, cache), self.activation_axes)
    x = self.mid_block(x, cache)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class _Decoder(nnx.Module):
  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype):
    dims = [(cfg.decoder_base_dim or cfg.base_dim) * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    temporal_upsample = cfg.temporal_downsample[::-1]
    self.conv_in = _CausalConv3d(cfg.z_dim, dims[0], 3, rngs=rngs, dtype=dtype)
    self.mid_block = _MidBlock(dims[0], rngs=rngs, dtype=dtype)
    blocks = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      mode = _resample_mode(temporal_upsample[i], "up") if i < len(temporal_upsample) else None
      cin = cin // 2 if i > 0 and not cfg.is_residual else cin  # Wan2.1's upsamplers halve the channels
      blocks.append(_UpBlock(cin, cout, cfg.num_res_blocks + 1, mode, cfg.is_residual, rngs=rngs, dtype=dtype))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = _RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = _CausalConv3d(dims[-1], 3 * cfg.patch_size**2, 3, rngs=rngs, dtype=dtype)
    self.activation_axes = ("batch", None, cfg.spatial_axis, None, None)

  def __call__(self, x, cache: _CausalCache):
    x = self.mid_block(self.conv_in(x, cache), cache)
    for block in self.up_blocks:
      x = sharding.constrain(block(x, cache), self.activation_axes)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


def _run_chunked(step, x, chunk: int):
  """Causal chunked evaluation: step(cache, x_chunk) -> (cache, y_chunk) over frames of x (B, F, ...).

  The first frame runs alone with an empty cache; the rest in chunks of `chunk` frames under
  `jax.lax.scan` (plus one shorter chunk if `chunk` does not divide F - 1). Returns y (B, F_out, ...).
  """
  cache, first = step(None, x[:, :1])
  outs, rest = [first], x[:, 1:]
  b, n = rest.shape[:2]
  full = n // chunk
  if full:
    xs = rest[:, : full * chunk].reshape(b, full, chunk, *rest.shape[2:]).swapaxes(0, 1)
    cache, ys = jax.lax.scan(step, cache, xs)
    outs.append(ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:]))
  if n % chunk:
    outs.append(step(cache, rest[:, full * chunk :])[1])
  return jnp.concatenate(outs, axis=1)


def _blend(a, b, extent: int, axis: int):
  """Cross-fades the last `extent` positions of tile `a` into the first of tile `b` along `axis`."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = extent
  ramp = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape).astype(b.dtype)
  head = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis) * (1 - ramp)
  head = head + jax.lax.slice_in_dim(b, 0, extent, axis=axis) * ramp
  return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


class WanVAE(nnx.Module):
  """vae.encode(video (B,F,H,W,3)) -> latent mean (B,F',H/s,W/s,z); vae.decode(latents) -> video."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, z = jnp.dtype(cfg.dtype), cfg.z_dim
    with nnx.use_eager_sharding(False):  # shardings are applied by jit (the VAE is replicated)
      self.encoder = _Encoder(cfg, rngs=rngs, dtype=dtype)
      self.quant_conv = _Conv(2 * z, 2 * z, (1, 1, 1), rngs=rngs, dtype=dtype)
      self.post_quant_conv = _Conv(z, z, (1, 1, 1), rngs=rngs, dtype=dtype)
      self.decoder = _Decoder(cfg, rngs=rngs, dtype=dtype)

  def encode(self, video: jax.Array) -> jax.Array:
    """video (B, F, H, W, 3) in [-1, 1], F = 1 + k*t -> latent mean (B, 1 + k, H/s, W/s, z), fp32."""
    cfg, (s, t) = self.cfg, (self.cfg.spatial_factor, self.cfg.temporal_factor)
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"WanVAE.encode: expected video (B, F, H, W, 3) channels-last, got {video.shape}")
    if (video.shape[1] - 1) % t:
      raise ValueError(
        f"WanVAE.encode: F={video.shape[1]} frames; the {t}x temporal compression needs "
        f"F = 1 + {t}k (e.g. {1 + t * ((video.shape[1] - 1) // t)} or "
        f"{1 + t * ((video.shape[1] - 1) // t + 1)})"
      )
    if video.shape[2] % s or video.shape[3] % s:
      raise ValueError(f"WanVAE.encode: H, W = {video.shape[2:4]} must be multiples of {s}")

    def step(prev, chunk):
      cache = _CausalCache(prev)
      x = sharding.constrain(chunk.astype(self.encoder.conv_in.dtype), self.encoder.activation_axes)
      out = self.quant_conv(self.encoder(x, cache))
      return cache.new, out[..., : cfg.z_dim].astype(jnp.float32)

    return _run_chunked(step, wan_vae22.patchify(video, cfg.patch_size), cfg.encode_chunk_frames or t)

  def decode(self, latents: jax.Array, tiled: bool = False) -> jax.Array:
    """latents (B, F', h, w, z) -> video (B, 1 + (F'-1)*t, h*s, w*s, 3) in [-1, 1], fp32.

    tiled=True decodes overlapping spatial tiles of `tile_sample_size` pixels one after another
    and cross-fades the overlaps (bounded memory in H, W; the result differs slightly at seams).
    """
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim:
      raise ValueError(f"WanVAE.decode: expected latents (B, F, h, w, {cfg.z_dim}), got {latents.shape}")
    video = self._decode_tiled(latents) if tiled else self._decode_untiled(latents)
    return jnp.clip(wan_vae22.unpatchify(video, cfg.patch_size), -1.0, 1.0)

  def _decode_untiled(self, latents):
    """latents (B, F', h, w, z) -> the decoder's output (B, F, h*s/p, w*s/p, 3*p*p), before unpatchify."""
    x = self.post_quant_conv(latents.astype(self.post_quant_conv.dtype))

    def step(prev, chunk):
      cache = _CausalCache(prev)
      return cache.new, self.decoder(sharding.constrain(chunk, self.decoder.activation_axes), cache)

    return _run_chunked(step, x, self.cfg.decode_chunk_latents).astype(jnp.float32)

  def _decode_tiled(self, latents):
    """As `_decode_untiled`, tile by tile; tiles are blended in the decoder's output (patch) space."""
    cfg, s, p = self.cfg, self.cfg.spatial_factor, self.cfg.patch_size
    tile, stride = cfg.tile_sample_size // s, cfg.tile_sample_stride // s
    out_stride = cfg.tile_sample_stride // p
    blend = cfg.tile_sample_size // p - out_stride
    h, w = latents.shape[2:4]
    if h <= tile and w <= tile:
      return self._decode_untiled(latents)
    rows = [
      [self._decode_untiled(latents[:, :, i : i + tile, j : j + tile]) for j in range(0, w, stride)]
      for i in range(0, h, stride)
    ]
    out_rows = []
    for i, row in enumerate(rows):
      for j in range(len(row)):  # tiles are blended in place, top then left, as the reference does
        if i > 0:
          row[j] = _blend(rows[i - 1][j], row[j], blend, axis=2)
        if j > 0:
          row[j] = _blend(row[j - 1], row[j], blend, axis=3)
      out_rows.append(jnp.concatenate([t[:, :, :out_stride, :out_stride] for t in row], axis=3))
    return jnp.concatenate(out_rows, axis=2)[:, :, : h * s // p, : w * s // p]

  def normalize_latents(self, latents: jax.Array) -> jax.Array:
    """(mean - latents_mean) / latents_std per channel: what the DiT is trained on."""
    mean, std = (jnp.asarray(v, jnp.float32) for v in (self.cfg.latents_mean, self.cfg.latents_std))
    return (latents - mean) / std

  def denormalize_latents(self, latents: jax.Array) -> jax.Array:
    mean, std = (jnp.asarray(v, jnp.float32) for v in (self.cfg.latents_mean, self.cfg.latents_std))
    return latents * std + mean


# ---------------------------------------------------------------------------------------------
# Weight import: diffusers AutoencoderKLWan and the original Wan2.1_VAE.pth / Wan2.2_VAE.pth layouts
# ---------------------------------------------------------------------------------------------
_ARCHITECTURE = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "is_residual", "patch_size")


def wan_vae_config_from_diffusers(cfg: dict, **overrides) -> WanVAEConfig:
  """Our config from a diffusers `AutoencoderKLWan` config.json (Wan2.1, or Wan2.2: is_residual, patch_size 2)."""
  if cfg.get("attn_scales", []) != []:
    raise ValueError(f"config.json: attn_scales={cfg['attn_scales']!r} is not supported (the Wan VAEs have none)")
  p = cfg.get("patch_size") or 1
  for key in ("in_channels", "out_channels"):
    if cfg.get(key, 3 * p * p) != 3 * p * p:
      raise ValueError(
        f"config.json: {key}={cfg[key]!r} is not supported (RGB video with patch_size={p} has {3 * p * p} channels)"
      )
  fields = {
    ours: cfg[theirs]
    for ours, theirs in (
      ("base_dim", "base_dim"),
      ("decoder_base_dim", "decoder_base_dim"),
      ("z_dim", "z_dim"),
      ("dim_mult", "dim_mult"),
      ("num_res_blocks", "num_res_blocks"),
      ("temporal_downsample", "temperal_downsample"),
      ("is_residual", "is_residual"),
      ("latents_mean", "latents_mean"),
      ("latents_std", "latents_std"),
    )
    if theirs in cfg
  }
  return WanVAEConfig(**{**fields, "patch_size": p, **overrides})


def wan_vae_config_from_original(keys, **overrides) -> WanVAEConfig:
  """The released config whose original `WanVAE_` layout the state-dict names `keys` follow: "wan2.2" if
  the encoder stages are nested (encoder.downsamples.i.downsamples.j...), else "wan2.1"; plus overrides."""
  nested = any(k.startswith("encoder.downsamples.") and ".downsamples." in k[len("encoder.") :] for k in keys)
  return WanVAEConfig.preset("wan2.2" if nested else "wan2.1", **overrides)


def _diffusers_key(path: str, residual: bool) -> str:
  """Our dotted parameter path -> the diffusers AutoencoderKLWan state-dict key."""
  key = path.replace("mid_block.attention.", "mid_block.attentions.0.")
  if not residual:  # Wan2.1's up blocks hold their upsampler in a one-element list
    key = key.replace(".upsampler.", ".upsamplers.0.")
  key = key.replace(".conv.", ".resample.1.")
  return key.removesuffix(".kernel") + ".weight" if key.endswith(".kernel") else key


def _original_key(path: str, cfg: WanVAEConfig) -> str:
  """Our dotted parameter path -> the original Wan2.1 / Wan2.2 `WanVAE_` state-dict key."""
  parts = _diffusers_key(path, cfg.is_residual).split(".")
  if parts[0] in ("quant_conv", "post_quant_conv"):
    return ".".join(["conv1" if parts[0] == "quant_conv" else "conv2", *parts[1:]])
  if cfg.is_residual:  # stages nest their blocks
    parts = wan_vae22.original_stage_key(parts, cfg.num_res_blocks)
  elif parts[:2] == ["decoder", "up_blocks"]:  # a flat list: per stage num_res_blocks + 1 resnets, a resample
    i, j = int(parts[2]), (int(parts[4]) if parts[3] == "resnets" else cfg.num_res_blocks + 1)
    parts = ["decoder", "upsamples", str(i * (cfg.num_res_blocks + 2) + j), *parts[5:]]
  key = ".".join(parts)
  for ours, theirs in (
    (".norm1.", ".residual.0."),
    (".conv1.", ".residual.2."),
    (".norm2.", ".residual.3."),
    (".conv2.", ".residual.6."),
    (".conv_shortcut.", ".shortcut."),
    (".conv_in.", ".conv1."),
    (".mid_block.resnets.0.", ".middle.0."),
    (".mid_block.attentions.0.", ".middle.1."),
    (".mid_block.resnets.1.", ".middle.2."),
    (".norm_out.", ".head.0."),
    (".conv_out.", ".head.2."),
    (".down_blocks.", ".downsamples."),
  ):
    key = key.replace(ours, theirs)
  return key


def wan_vae_arrays(model: WanVAE, sd, layout: str = "diffusers") -> dict[str, np.ndarray]:
  """Torch-layout tensors (`layout`: "diffusers" or "original") -> our dotted paths, channels-last.

  Conv weights (Co, Ci, *k) become (*k, Ci, Co); norm gammas (C, 1, 1[, 1]) become (C,).
  Raises ValueError listing missing / unexpected keys, or naming a key with the wrong shape.
  """
  if layout not in ("diffusers", "original"):
    raise ValueError(f"layout={layout!r}; expected 'diffusers' or 'original'")
  names = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  cfg = model.cfg
  src = {p: (_diffusers_key(p, cfg.is_residual) if layout == "diffusers" else _original_key(p, cfg)) for p in names}
  missing, unexpected = sorted(set(src.values()) - set(sd)), sorted(set(sd) - set(src.values()))
  if missing or unexpected:
    arch = ", ".join(f"{k}={getattr(cfg, k)}" for k in _ARCHITECTURE)
    raise ValueError(
      f"Wan VAE checkpoint ({layout} layout) does not match the model config ({arch}).\n"
      f"  missing: {missing}\n  unexpected: {unexpected}"
    )
  out = {}
  for path, shape in sorted(names.items()):
    a = np.asarray(sd[src[path]])
    if a.ndim == len(shape) and a.ndim >= 4:
      a = np.transpose(a, (*range(2, a.ndim), 1, 0))
    elif a.size == int(np.prod(shape)) and len(shape) == 1:
      a = a.reshape(shape)
    if tuple(a.shape) != tuple(shape):
      raise ValueError(
        f"Wan VAE checkpoint: shape mismatch at {src[path]}: checkpoint "
        f"{tuple(np.shape(sd[src[path]]))}, model expects {tuple(shape)} (channels-last)"
      )
    out[path] = a
  return out
