"""Wan2.1 text-to-video diffusion transformer (DiT) in Flax NNX; also Wan2.2 TI2V-5B (per-token timesteps).

Axis letters: B batch, F H W C latent frames/height/width/channels (channels-last), T video tokens,
N heads, D head dim, L text tokens, E model width (N * D).

  latents (B, F, H, W, C) --patchify--> (B, T, E), T = F/pt * H/ph * W/pw (f-major order)
  each block: adaLN-modulated self-attention (RMSNorm on q, k across heads; 3-D RoPE),
              cross-attention to the projected text context, adaLN-modulated GELU FFN
  head: adaLN-modulated LayerNorm, projection, unpatchify --> velocity (B, F, H, W, C_out)

Timesteps are (B,) (one per sample, Wan2.1) or (B, T) (one per token, Wan2.2 TI2V: 0 on the tokens of a
clean conditioning frame); the time embedding and every adaLN modulation then vary per token.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from microverse_jax import sharding
from microverse_jax.kernels.attention.api import attention
from microverse_jax.models.layers import Dense, LayerNorm, RMSNorm, apply_rope, param, rope_3d, timestep_embedding

LORA_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
  patch_size: tuple[int, int, int] = (1, 2, 2)
  num_heads: int = 12
  head_dim: int = 128
  in_channels: int = 16
  out_channels: int = 16
  text_dim: int = 4096
  freq_dim: int = 256
  ffn_dim: int = 8960
  num_layers: int = 30
  eps: float = 1e-6
  rope_max_seq_len: int = 1024
  qk_norm: str | None = "rms_norm_across_heads"
  cross_attn_norm: bool = True
  # Beyond the architecture: how to run it.
  dtype: str = "float32"  # compute dtype; parameters stay fp32
  attention_impl: str = "auto"  # see microverse_jax.kernels.attention.api
  remat_policy: str = "none"  # a name in REMAT_POLICIES
  lora_rank: int = 0  # 0 = no LoRA parameters
  lora_alpha: float = 32.0
  lora_targets: tuple[str, ...] = LORA_TARGETS

  @property
  def dim(self) -> int:
    return self.num_heads * self.head_dim

  @classmethod
  def preset(cls, name: str, **overrides) -> "WanDiTConfig":
    """Named sizes: "1.3B" and "14B" (Wan2.1 T2V), "TI2V-5B" (Wan2.2), or "tiny" for CPU tests."""
    presets = {
      "1.3B": dict(num_heads=12, ffn_dim=8960, num_layers=30),
      "14B": dict(num_heads=40, ffn_dim=13824, num_layers=40),
      "TI2V-5B": dict(num_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
      "tiny": dict(
        num_heads=2,
        head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=32,
      ),
    }
    key = name.upper() if name.upper() in presets else name.lower()
    if key not in presets:
      raise ValueError(f"unknown WanDiT preset {name!r}; expected one of {sorted(presets)}")
    return cls(**{**presets[key], **overrides})


# The remat (gradient checkpointing) menu for the scanned blocks, one place: what the backward pass keeps
# from the forward of each block, and what it recomputes. BLOCK_OUTPUTS are the sub-layer outputs each
# block names with checkpoint_name (self-attention, cross-attention and FFN, before their residual adds).
BLOCK_OUTPUTS = ("self_attn_out", "cross_attn_out", "ffn_out")
REMAT_POLICIES = {
  "none": "keep every activation (no recompute; the most memory)",
  "dots_saveable": "keep every matmul output, recompute the rest",
  "nothing_saveable": "keep only each block's input, recompute the whole block (the least memory)",
  "save_block_outputs": "keep the named sub-layer outputs (BLOCK_OUTPUTS), recompute inside each",
  "offload_block_outputs": "as save_block_outputs, but the outputs wait in host memory (TPU: pinned_host)",
}


def remat_policy(name: str):
  """The jax.checkpoint policy of a REMAT_POLICIES name (None for "none"); ValueError naming model.remat_policy."""
  cp = jax.checkpoint_policies
  if name == "save_block_outputs":
    return cp.save_only_these_names(*BLOCK_OUTPUTS)
  if name == "offload_block_outputs":
    return cp.save_and_offload_only_these_names(
      names_which_can_be_saved=[],
      names_which_can_be_offloaded=list(BLOCK_OUTPUTS),
      offload_src="device",
      offload_dst="pinned_host",
    )
  if name not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={name!r}: expected one of {', '.join(REMAT_POLICIES)}")
  return None if name == "none" else getattr(cp, name)


def _remat(fn, policy: str):
  """fn under jax.checkpoint with the named policy (fn itself for "none")."""
  if policy == "none":
    return fn
  return jax.checkpoint(fn, policy=remat_policy(policy), prevent_cse=False)


class Attention(nnx.Module):
  """Multi-head attention with RMSNorm on q and k across heads; self (with RoPE) or cross."""

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    e, dt = cfg.dim, jnp.dtype(cfg.dtype)

    def dense(name, axes):
      rank = cfg.lora_rank if name in cfg.lora_targets else 0
      return Dense(e, e, axes, rngs=rngs, dtype=dt, lora_rank=rank, lora_alpha=cfg.lora_alpha)

    self.q, self.k, self.v = (dense(n, ("embed", "heads")) for n in "qkv")
    self.o = dense("o", ("heads", "embed"))
    self.norm_q = RMSNorm(e, ("heads",), rngs=rngs, eps=cfg.eps)
    self.norm_k = RMSNorm(e, ("heads",), rngs=rngs, eps=cfg.eps)
    self.num_heads, self.impl = cfg.num_heads, cfg.attention_impl

  def project(self, x, src):
    """(q, k, v) projections (B, T or L, E) of x (queries) and src (keys and values)."""
    return self.q(x), self.k(src), self.v(src)

  def __call__(self, x, context=None, rope=None, kv_mask=None):
    """x: (B, T, E); context: (B, L, E) or None (self-attention); returns (B, T, E)."""
    q, k, v = self.project(x, x if context is None else context)
    q, k = self.norm_q(q), self.norm_k(k)
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)
    q, k, v = split(q), split(k), split(v)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = attention(q, k, v, kv_mask=kv_mask, impl=self.impl)
    return self.o(out.reshape(*x.shape[:2], -1))


class WanBlock(nnx.Module):
  """One DiT block; `modulation` (6, E) is added to the timestep projection (per sample or per token)."""

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    e, dt = cfg.dim, jnp.dtype(cfg.dtype)
    self.norm1 = LayerNorm(e, ("embed",), rngs=rngs, eps=cfg.eps)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.norm2 = LayerNorm(e, ("embed",), rngs=rngs, eps=cfg.eps, affine=True) if cfg.cross_attn_norm else None
    self.cross_attn = Attention(cfg, rngs=rngs)
    self.norm3 = LayerNorm(e, ("embed",), rngs=rngs, eps=cfg.eps)
    lora = lambda n: dict(lora_rank=cfg.lora_rank if n in cfg.lora_targets else 0, lora_alpha=cfg.lora_alpha)
    self.ffn_in = Dense(e, cfg.ffn_dim, ("embed", "mlp"), rngs=rngs, dtype=dt, **lora("ffn_in"))
    self.ffn_out = Dense(cfg.ffn_dim, e, ("mlp", "embed"), rngs=rngs, dtype=dt, **lora("ffn_out"))
    self.modulation = param(rngs, nnx.initializers.normal(e**-0.5), (6, e), (None, "embed"))
    self.dtype = dt

  def __call__(self, h, context, time_mod, rope, context_mask):
    """h: (B, T, E); context: (B, L, E); time_mod: (B, 1 or T, 6, E) fp32; returns (B, T, E)."""
    shift, scale, gate, c_shift, c_scale, c_gate = jnp.unstack(self.modulation[...] + time_mod, axis=2)
    x = (self.norm1(h) * (1 + scale) + shift).astype(self.dtype)
    attn = checkpoint_name(self.self_attn(x, rope=rope), BLOCK_OUTPUTS[0])
    h = (h.astype(jnp.float32) + attn.astype(jnp.float32) * gate).astype(h.dtype)
    x = h if self.norm2 is None else self.norm2(h).astype(self.dtype)
    h = h + checkpoint_name(self.cross_attn(x, context, kv_mask=context_mask), BLOCK_OUTPUTS[1]).astype(h.dtype)
    x = (self.norm3(h) * (1 + c_scale) + c_shift).astype(self.dtype)
    ff = checkpoint_name(self.ffn_out(jax.nn.gelu(self.ffn_in(x), approximate=True)), BLOCK_OUTPUTS[2])
    h = (h.astype(jnp.float32) + ff.astype(jnp.float32) * c_gate).astype(h.dtype)
    return sharding.constrain(h, ("batch", "tokens", "embed"))


class WanDiT(nnx.Module):
  """model(latents (B,F,H,W,C), timesteps (B,) or (B,T) in [0, 1000], context (B,L,text_dim)) -> (B,F,H,W,C_out).

  Output fp32. Per-token timesteps (B, T) follow the token order of patchify (f-major, T = F'H'W').
  """

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    remat_policy(cfg.remat_policy)  # a bad name fails here, before any tracing
    self.cfg = cfg
    e, f32 = cfg.dim, jnp.float32
    with nnx.use_eager_sharding(False):  # sharding is applied by jit out_shardings (see train.py)
      self.patch_embed = Dense(
        math.prod(cfg.patch_size) * cfg.in_channels, e, (None, "embed"), rngs=rngs, dtype=jnp.dtype(cfg.dtype)
      )
      self.time_embed_1 = Dense(cfg.freq_dim, e, (None, "embed"), rngs=rngs, dtype=f32)
      self.time_embed_2 = Dense(e, e, ("mlp", "embed"), rngs=rngs, dtype=f32)
      self.time_proj = Dense(e, 6 * e, ("embed", "mlp"), rngs=rngs, dtype=f32)
      self.text_embed_1 = Dense(cfg.text_dim, e, ("text_embed", "embed"), rngs=rngs, dtype=jnp.dtype(cfg.dtype))
      self.text_embed_2 = Dense(e, e, ("mlp", "embed"), rngs=rngs, dtype=jnp.dtype(cfg.dtype))

      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(rngs):
        return WanBlock(cfg, rngs=rngs)

      self.blocks = make_blocks(rngs)
      self.head_norm = LayerNorm(e, ("embed",), rngs=rngs, eps=cfg.eps)
      self.head = Dense(
        e, math.prod(cfg.patch_size) * cfg.out_channels, ("embed", None), rngs=rngs, dtype=jnp.dtype(cfg.dtype)
      )
      self.head_modulation = param(rngs, nnx.initializers.normal(e**-0.5), (2, e), (None, "embed"))

  def _check(self, latents, timesteps, context, context_mask):
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[-1] != cfg.in_channels:
      raise ValueError(f"latents: expected (B, F, H, W, {cfg.in_channels}) channels-last, got {latents.shape}")
    for n, size, p in zip("FHW", latents.shape[1:4], cfg.patch_size):
      if size % p:
        raise ValueError(f"latents: {n}={size} is not divisible by the patch size {p} (patch_size={cfg.patch_size})")
    grid = [s // p for s, p in zip(latents.shape[1:4], cfg.patch_size)]
    if max(grid) > cfg.rope_max_seq_len:
      raise ValueError(f"latents: token grid {grid} exceeds rope_max_seq_len={cfg.rope_max_seq_len}")
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
      raise ValueError(f"context: expected (B, L, {cfg.text_dim}), got {context.shape}")
    b, t = latents.shape[0], math.prod(grid)
    if timesteps.shape not in ((b,), (b, t)):
      raise ValueError(
        f"timesteps: expected shape ({b},) or ({b}, {t}) (one per token of grid {grid}), got {timesteps.shape}"
      )
    if context.shape[0] != latents.shape[0]:
      raise ValueError(f"context batch {context.shape[0]} != latents batch {latents.shape[0]}")
    if context_mask is not None and context_mask.shape != context.shape[:2]:
      raise ValueError(f"context_mask: expected {context.shape[:2]}, got {context_mask.shape}")

  def __call__(self, latents, timesteps, context, context_mask=None):
    self._check(latents, timesteps, context, context_mask)
    cfg = self.cfg
    (pt, ph, pw), (b, f, h, w, c) = cfg.patch_size, latents.shape
    grid = (f // pt, h // ph, w // pw)
    x = latents.reshape(b, grid[0], pt, grid[1], ph, grid[2], pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, math.prod(grid), pt * ph * pw * c)
    hidden = sharding.constrain(self.patch_embed(x), ("batch", "tokens", "embed"))

    temb = self.time_embed_2(jax.nn.silu(self.time_embed_1(timestep_embedding(timesteps, cfg.freq_dim))))
    time_mod = self.time_proj(jax.nn.silu(temb)).reshape(b, -1, 6, cfg.dim)  # (B, 1 or T, 6, E)
    temb = temb.reshape(b, -1, cfg.dim)  # (B, 1 or T, E)
    if timesteps.ndim == 2:
      time_mod = sharding.constrain(time_mod, ("batch", "tokens", None, "embed"))
    ctx = self.text_embed_2(jax.nn.gelu(self.text_embed_1(context), approximate=True))
    rope = rope_3d(grid, cfg.head_dim)

    graphdef, block_state = nnx.split(self.blocks)

    def body(carry, layer_state):
      block = nnx.merge(graphdef, layer_state)
      return block(carry, ctx, time_mod, rope, context_mask), None

    hidden, _ = jax.lax.scan(_remat(body, cfg.remat_policy), hidden, block_state)

    shift, scale = jnp.unstack(self.head_modulation[...] + temb[:, :, None], axis=2)
    out = self.head((self.head_norm(hidden) * (1 + scale) + shift).astype(hidden.dtype))
    out = out.reshape(b, *grid, pt, ph, pw, cfg.out_channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return out.reshape(b, f, h, w, cfg.out_channels).astype(jnp.float32)
