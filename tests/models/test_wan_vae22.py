"""Wan2.2 VAE: parity with diffusers AutoencoderKLWan(is_residual=True, patch_size=2), first-frame causality,
latent normalisation as diffusers' pipelines do it, chunked and tiled decode, weight import (diffusers, .pth)."""

from __future__ import annotations

import dataclasses
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tiny_diffusers import TINY_WAN22_VAE as TINY_WAN22_BASE  # noqa: E402
from vae_helpers import decode, encode, to_ours  # noqa: E402

from microverse_jax import plans  # noqa: E402
from microverse_jax.convert import checkpoint_config, from_checkpoint  # noqa: E402
from microverse_jax.models.wan_vae import (  # noqa: E402
  WanVAE,
  WanVAEConfig,
  wan_vae_arrays,
  wan_vae_config_from_diffusers,
)
from microverse_jax.models.wan_vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD  # noqa: E402

# WanVAEConfig.preset("tiny-wan2.2") as diffusers kwargs (16x spatial, 4x temporal), with latent statistics
# that are not the identity.
TINY_WAN22_VAE = dict(
  **TINY_WAN22_BASE,
  latents_mean=[0.3, -0.2, 0.1, 0.5],
  latents_std=[0.5, 1.5, 0.8, 2.0],
)
# The released TI2V-5B VAE as diffusers configures it (Wan-AI/Wan2.2-TI2V-5B-Diffusers, vae/config.json).
WAN22_DIFFUSERS = dict(
  TINY_WAN22_VAE,
  base_dim=160,
  decoder_base_dim=256,
  z_dim=48,
  num_res_blocks=2,
  latents_mean=list(WAN22_LATENTS_MEAN),
  latents_std=list(WAN22_LATENTS_STD),
)


def _reference(seed=0, **overrides):
  """A random diffusers Wan2.2 VAE whose norm gammas and biases are not trivial either."""
  torch.manual_seed(seed)
  ref = diffusers.AutoencoderKLWan(**{**TINY_WAN22_VAE, **overrides}).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith(("gamma", "bias")):
        p.add_(0.2 * torch.randn_like(p))
  return ref


def _video(frames, batch=1, height=32, width=48, seed=None):
  g = torch.Generator().manual_seed(frames if seed is None else seed)
  return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
  ref = _reference()
  path = str(tmp_path_factory.mktemp("wan_vae22_diffusers"))
  ref.save_pretrained(path)
  return ref, path


@pytest.fixture(scope="module")
def vae(reference_dir):
  return from_checkpoint(reference_dir[1], "vae")


def _with_config(model, **changes):
  """The same weights under a config that only changes how the model runs."""
  other = nnx.eval_shape(lambda: WanVAE(dataclasses.replace(model.cfg, **changes), rngs=nnx.Rngs(0)))
  return nnx.merge(nnx.split(other)[0], nnx.state(model))


def _max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_config_presets_and_latent_shape():
  cfg = WanVAEConfig.preset("wan2.2")
  assert (cfg.spatial_factor, cfg.temporal_factor, cfg.z_dim, cfg.patch_size) == (16, 4, 48, 2)
  assert cfg == wan_vae_config_from_diffusers(WAN22_DIFFUSERS)
  assert wan_vae_config_from_diffusers(TINY_WAN22_VAE) == WanVAEConfig.preset(
    "tiny-wan2.2", latents_mean=(0.3, -0.2, 0.1, 0.5), latents_std=(0.5, 1.5, 0.8, 2.0)
  )
  c = ml_collections.ConfigDict(
    {
      "autoencoder": {"kind": "wan_vae", "preset": "wan2.2", "init_from": ""},
      "data": {"num_frames": 121, "height": 704, "width": 1280},
    }
  )
  vae = plans.vae_config(c)
  assert plans.latent_shape(c, vae) == (31, 44, 80, 48)  # TI2V-5B's 720p clip
  with pytest.raises(ValueError, match="divisible by 16"):
    plans.latent_shape(c, vae, height=360)


def test_full_size_architecture_matches_diffusers():
  """Every parameter of the released Wan2.2 VAE maps to a diffusers key of the right shape (no weights needed)."""
  with torch.device("meta"):
    ref = diffusers.AutoencoderKLWan(**WAN22_DIFFUSERS)
  sd = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
  abstract = nnx.eval_shape(lambda: WanVAE(WanVAEConfig.preset("wan2.2"), rngs=nnx.Rngs(0)))
  assert len(wan_vae_arrays(abstract, sd, "diffusers")) == len(sd)  # raises on any key or shape mismatch
  original = _original_names(sd, num_res_blocks=2)
  assert len(wan_vae_arrays(abstract, original, "original")) == len(sd)
  # Names as the original `WanVAE_` (Wan2.2 repo, wan/modules/vae2_2.py) nests them.
  for key in (
    "encoder.conv1.weight",
    "encoder.downsamples.0.downsamples.0.residual.0.gamma",
    "encoder.downsamples.1.downsamples.0.shortcut.weight",
    "encoder.downsamples.1.downsamples.2.resample.1.weight",
    "encoder.downsamples.2.downsamples.2.time_conv.weight",
    "encoder.middle.1.to_qkv.weight",
    "encoder.head.2.weight",
    "conv1.weight",
    "conv2.bias",
    "decoder.upsamples.0.upsamples.3.time_conv.weight",
    "decoder.upsamples.2.upsamples.0.shortcut.weight",
    "decoder.upsamples.3.upsamples.0.shortcut.weight",
    "decoder.upsamples.2.upsamples.2.residual.6.bias",
    "decoder.upsamples.2.upsamples.3.resample.1.weight",
    "decoder.head.0.gamma",
  ):
    assert key in original, key
  for absent in ("encoder.downsamples.0.downsamples.2.time_conv", "decoder.upsamples.2.upsamples.3.time_conv"):
    assert not any(k.startswith(absent) for k in original), absent


@pytest.mark.parametrize("frames", [5, 9])
def test_encode_and_decode_match_diffusers(reference_dir, vae, frames):
  ref, _ = reference_dir
  video = _video(frames, batch=2)
  with torch.no_grad():
    posterior = ref.encode(video).latent_dist
    decoded = ref.decode(posterior.mean).sample
  assert torch.equal(posterior.mode(), posterior.mean)
  ours = encode(vae, to_ours(video))
  assert ours.shape == (2, 1 + (frames - 1) // 4, 2, 3, 4)
  enc_diff = _max_diff(ours, to_ours(posterior.mean))
  ours_decoded = decode(vae, to_ours(posterior.mean))
  assert ours_decoded.shape == (2, frames, 32, 48, 3)
  dec_diff = _max_diff(ours_decoded, to_ours(decoded))
  print(f"frames={frames}: encode max |diff| {enc_diff:.2e}, decode max |diff| {dec_diff:.2e}")
  assert enc_diff <= 1e-4 and dec_diff <= 1e-4
  assert np.abs(to_ours(decoded)).mean() > 0.05  # not a trivially zero comparison


def test_first_latent_frame_is_the_first_video_frame_alone(reference_dir, vae):
  """Image conditioning relies on it: latent frame 0 depends on video frame 0 only."""
  ref, _ = reference_dir
  video = _video(9)
  whole = np.asarray(encode(vae, to_ours(video)))
  alone = np.asarray(encode(vae, to_ours(video[:, :, :1])))
  np.testing.assert_allclose(alone[:, 0], whole[:, 0], atol=1e-6, rtol=0)
  changed = np.asarray(encode(vae, to_ours(torch.cat([video[:, :, :1], -video[:, :, 1:]], dim=2))))
  np.testing.assert_allclose(changed[:, 0], whole[:, 0], atol=1e-6, rtol=0)
  assert _max_diff(changed[:, 1:], whole[:, 1:]) > 1e-2
  with torch.no_grad():  # the reference agrees
    ref_alone = ref.encode(video[:, :, :1]).latent_dist.mean
  np.testing.assert_allclose(alone, to_ours(ref_alone), atol=1e-4, rtol=0)


def test_latent_normalisation_matches_diffusers_pipelines(reference_dir, vae):
  """WanImageToVideoPipeline (TI2V, expand_timesteps) normalises the first-frame latent as we do, and
  un-normalises before decoding as `denormalize_latents` does."""
  ref, _ = reference_dir
  image = _video(1)[:, :, 0]  # (1, 3, H, W): the pipeline encodes one image per call
  pipe = types.SimpleNamespace(
    config=types.SimpleNamespace(expand_timesteps=True),
    vae=ref,
    vae_scale_factor_temporal=4,
    vae_scale_factor_spatial=16,
  )
  with torch.no_grad():
    _, condition, _ = diffusers.WanImageToVideoPipeline.prepare_latents(
      pipe, image, 1, 4, 32, 48, 5, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
  ours = vae.normalize_latents(encode(vae, to_ours(image[:, :, None])))
  np.testing.assert_allclose(np.asarray(ours), to_ours(condition), atol=1e-4, rtol=0)
  # pipeline_wan.py / pipeline_wan_i2v.py before vae.decode: latents / (1 / std) + mean.
  z = torch.randn(2, 4, 2, 2, 3, generator=torch.Generator().manual_seed(1))
  mean, inv_std = (torch.tensor(ref.config.latents_mean), 1.0 / torch.tensor(ref.config.latents_std))
  expected = z / inv_std.view(1, 4, 1, 1, 1) + mean.view(1, 4, 1, 1, 1)
  np.testing.assert_allclose(np.asarray(vae.denormalize_latents(to_ours(z))), to_ours(expected), atol=1e-6)


def test_chunked_encode_and_decode_equal_one_shot(vae):
  video = jax.random.uniform(jax.random.key(1), (1, 17, 32, 16, 3), minval=-1, maxval=1)
  chunked = encode(vae, video)  # 4 frames per scan step
  one_shot = encode(_with_config(vae, encode_chunk_frames=16), video)
  uneven = encode(_with_config(vae, encode_chunk_frames=12), video)  # 12, then a 4-frame tail
  assert chunked.shape == (1, 5, 2, 1, 4)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(one_shot), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(uneven), np.asarray(one_shot), atol=1e-5, rtol=0)
  latents = jax.random.normal(jax.random.key(2), (1, 5, 2, 1, 4))
  one_shot = decode(_with_config(vae, decode_chunk_latents=4), latents)
  np.testing.assert_allclose(np.asarray(decode(vae, latents)), np.asarray(one_shot), atol=1e-5, rtol=0)


def test_tiled_decode_matches_diffusers_and_full_decode(reference_dir):
  ref, path = reference_dir
  ref.enable_tiling(
    tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=32, tile_sample_stride_width=32
  )
  latents = torch.randn(1, 4, 2, 6, 8, generator=torch.Generator().manual_seed(3))  # 96 x 128 pixels: 3 x 4 tiles
  try:
    with torch.no_grad():
      expected = ref.decode(latents).sample
  finally:
    ref.disable_tiling()
  ours = from_checkpoint(path, "vae", tile_sample_size=64, tile_sample_stride=32)
  tiled = decode(ours, to_ours(latents), tiled=True)
  assert tiled.shape == (1, 5, 96, 128, 3)
  print(f"tiled decode vs diffusers tiled: max |diff| {_max_diff(tiled, to_ours(expected)):.2e}")
  np.testing.assert_allclose(np.asarray(tiled), to_ours(expected), atol=1e-4, rtol=0)
  # Tiles see zero padding where the full decode sees neighbours (random weights: wide receptive fields), so
  # tiled only approximates full decoding; a misplaced or mis-blended tile would decorrelate them.
  full = np.asarray(decode(ours, to_ours(latents)))
  diff, corr = np.abs(np.asarray(tiled) - full), np.corrcoef(np.asarray(tiled).ravel(), full.ravel())[0, 1]
  print(f"tiled vs full: mean |diff| {diff.mean():.3f} (mean |full| {np.abs(full).mean():.3f}), corr {corr:.4f}")
  assert diff.mean() < 0.15 * np.abs(full).mean() and corr > 0.95


# Original Wan2.2 `WanVAE_` names (wan/modules/vae2_2.py): every stage is a Sequential of its res blocks then
# its resample (encoder `downsamples.i.downsamples.j`, decoder `upsamples.i.upsamples.j`); written independently
# of the converter (test-only rename).
def _original_names(sd, num_res_blocks):
  out = {}
  for key, value in sd.items():
    parts = key.split(".")
    if parts[1] in ("down_blocks", "up_blocks") and parts[0] in ("encoder", "decoder"):
      inner = "downsamples" if parts[0] == "encoder" else "upsamples"
      resample_at = num_res_blocks if parts[0] == "encoder" else num_res_blocks + 1
      if parts[3] == "resnets":
        parts = [parts[0], inner, parts[2], inner, *parts[4:]]
      else:  # downsampler / upsampler
        parts = [parts[0], inner, parts[2], inner, str(resample_at), *parts[4:]]
    k = ".".join(parts)
    for d, o in (
      (".norm1.", ".residual.0."),
      (".conv1.", ".residual.2."),
      (".norm2.", ".residual.3."),
      (".conv2.", ".residual.6."),
      (".conv_shortcut.", ".shortcut."),
      ("mid_block.resnets.0.", "middle.0."),
      ("mid_block.attentions.0.", "middle.1."),
      ("mid_block.resnets.1.", "middle.2."),
      ("norm_out.", "head.0."),
      ("conv_out.", "head.2."),
      ("coder.conv_in.", "coder.conv1."),
    ):
      k = k.replace(d, o)
    k = {"quant_conv": "conv1", "post_quant_conv": "conv2"}.get(k.split(".")[0], k.split(".")[0]) + k[k.index(".") :]
    out[k] = value
  return out


def test_original_pth_loads_identically(reference_dir, vae, tmp_path):
  ref, _ = reference_dir
  release = tmp_path / "Wan2.2-TI2V-5B"
  release.mkdir()
  torch.save(_original_names(ref.state_dict(), num_res_blocks=1), str(release / "Wan2.2_VAE.pth"))
  arch = {k: v for k, v in dataclasses.asdict(vae.cfg).items()}
  assert checkpoint_config(str(release), "vae") == WanVAEConfig.preset("wan2.2")  # told apart by the key names
  original = from_checkpoint(str(release), "vae", **arch)  # the release directory finds Wan2.2_VAE.pth
  a = nnx.state(vae, nnx.Param).to_pure_dict()
  b = nnx.state(original, nnx.Param).to_pure_dict()
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_bad_inputs_give_clear_errors(reference_dir, vae, tmp_path):
  with pytest.raises(ValueError, match=r"F=6 frames.*4x temporal.*F = 1 \+ 4k"):
    vae.encode(jnp.zeros((1, 6, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"multiples of 16"):
    vae.encode(jnp.zeros((1, 1, 24, 32, 3)))
  with pytest.raises(ValueError, match=r"avg-down shortcut 4 -> 12 channels"):
    WanVAE(WanVAEConfig.preset("tiny-wan2.2", dim_mult=(1, 3, 4, 4)), rngs=nnx.Rngs(0))
  _, src = reference_dir
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  bad = tmp_path / "bad"
  bad.mkdir()
  os.symlink(os.path.join(src, "diffusion_pytorch_model.safetensors"), bad / "diffusion_pytorch_model.safetensors")
  (bad / "config.json").write_text(json.dumps({**config, "in_channels": 3}))
  with pytest.raises(ValueError, match=r"in_channels=3 is not supported \(RGB video with patch_size=2 has 12"):
    from_checkpoint(str(bad), "vae")
  (bad / "config.json").write_text(json.dumps({**config, "is_residual": False}))  # Wan2.2 weights, Wan2.1 config
  with pytest.raises(ValueError, match=r"does not match the model config \(.*is_residual=False"):
    from_checkpoint(str(bad), "vae")
