"""What only the Wan2.2 VAE (TI2V-5B's) has: the model itself is `WanVAE(WanVAEConfig.preset("wan2.2"))`.

Wan2.2's VAE is Wan2.1's causal 3-D autoencoder (same convolutions, norms, attention, frame cache) with
  - a 2x2 patchify in front (3 -> 12 channels) and the matching unpatchify after the decoder, so the
    spatial factor is 16 (8 from the network, 2 from the patches); z = 48 latent channels;
  - residual stages: every encoder stage adds a parameter-free average-pool shortcut (`avg_down`)
    around its res blocks + downsampler, every upsampling decoder stage a duplicating one (`dup_up`).

Axis letters as in wan_vae.py: B batch, F frames, H W height/width, C channels; p the patch size,
ft / fs the stage's temporal / spatial factor. Everything here is parameter-free, and has no
knowledge of the frame cache: the shortcuts act on one chunk at a time, as the reference's do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# fmt: off
WAN22_LATENTS_MEAN = (
  -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
  0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
  -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
  -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
  0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
  0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
  0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
  0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
# fmt: on

WAN22_PRESET = dict(
  base_dim=160,
  decoder_base_dim=256,
  z_dim=48,
  dim_mult=(1, 2, 4, 4),
  num_res_blocks=2,
  temporal_downsample=(False, True, True),
  is_residual=True,
  patch_size=2,
  latents_mean=WAN22_LATENTS_MEAN,
  latents_std=WAN22_LATENTS_STD,
)


def patchify(x: jax.Array, p: int) -> jax.Array:
  """(B, F, H, W, C) -> (B, F, H/p, W/p, C*p*p); channel c*p*p + j*p + i holds pixel (i, j) of a patch
  (row offset i, column offset j), the reference's `(c r q)` order."""
  if p == 1:
    return x
  b, f, h, w, c = x.shape
  x = x.reshape(b, f, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
  return x.reshape(b, f, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `patchify`: (B, F, h, w, C*p*p) -> (B, F, h*p, w*p, C)."""
  if p == 1:
    return x
  b, f, h, w, cpp = x.shape
  x = x.reshape(b, f, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
  return x.reshape(b, f, h * p, w * p, cpp // (p * p))


def avg_down(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
  """The encoder stages' shortcut: (B, F, H, W, Ci) -> (B, ceil(F/ft), H/fs, W/fs, cout).

  Folds each ft x fs x fs block into channels (Ci*ft*fs*fs, ordered channel, time, row, column) and
  averages consecutive groups of Ci*ft*fs*fs/cout of them. Time is zero-padded at the front to a
  multiple of ft (the first chunk's single frame is averaged with zeros, as the reference does).
  """
  b, f, h, w, c = x.shape
  pad = -f % ft
  x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
  f = (f + pad) // ft
  x = x.reshape(b, f, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
  return x.reshape(b, f, h // fs, w // fs, cout, -1).mean(axis=-1)


def dup_up(x: jax.Array, cout: int, ft: int, fs: int, first_chunk: bool) -> jax.Array:
  """The upsampling decoder stages' shortcut: (B, F, H, W, Ci) -> (B, F*ft (- ft + 1), H*fs, W*fs, cout).

  Repeats every channel Co*ft*fs*fs/Ci times and unfolds the result (ordered channel, time, row, column)
  into ft x fs x fs blocks; the first chunk keeps only the last of its ft frames (frame 0 is not
  upsampled in time).
  """
  b, f, h, w, c = x.shape
  x = jnp.repeat(x, cout * ft * fs * fs // c, axis=-1).reshape(b, f, h, w, cout, ft, fs, fs)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, f * ft, h * fs, w * fs, cout)
  return x[:, ft - 1 :] if first_chunk else x


def original_stage_key(parts: list[str], num_res_blocks: int) -> list[str]:
  """Our dotted path (split) -> the original Wan2.2 `WanVAE_` nesting of a residual stage.

  encoder.down_blocks.i.resnets.j / .downsampler -> encoder.downsamples.i.downsamples.(j / num_res_blocks);
  decoder.up_blocks.i.resnets.j / .upsampler -> decoder.upsamples.i.upsamples.(j / num_res_blocks + 1).
  Other paths are returned unchanged.
  """
  for side, ours, theirs, last in (
    ("encoder", "down_blocks", "downsamples", num_res_blocks),
    ("decoder", "up_blocks", "upsamples", num_res_blocks + 1),
  ):
    if parts[:2] == [side, ours]:
      j = parts[4] if parts[3] == "resnets" else str(last)
      rest = parts[5:] if parts[3] == "resnets" else parts[4:]
      return [side, theirs, parts[2], theirs, j, *rest]
  return parts
