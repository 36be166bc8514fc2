"""Wan-VAE: parity with diffusers AutoencoderKLWan, chunked = one-shot, weight import, errors, sharding."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tiny_diffusers import TINY_WAN_VAE  # noqa: E402
from vae_helpers import decode, encode, to_ours  # noqa: E402

from microverse_jax.convert import from_checkpoint  # noqa: E402
from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig  # noqa: E402


def _reference(seed=0, **overrides):
  """A random diffusers AutoencoderKLWan whose norm gammas and biases are not trivial either."""
  torch.manual_seed(seed)
  ref = diffusers.AutoencoderKLWan(**{**TINY_WAN_VAE, **overrides}).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith(("gamma", "bias")):
        p.add_(0.2 * torch.randn_like(p))
  return ref


def _to_torch(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 4, 1, 2, 3).copy())


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
  ref = _reference()
  path = str(tmp_path_factory.mktemp("wan_vae_diffusers"))
  ref.save_pretrained(path)
  return ref, path


@pytest.fixture(scope="module")
def vae(reference_dir):
  return from_checkpoint(reference_dir[1], "vae")


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_and_decode_match_diffusers(reference_dir, vae, frames):
  ref, _ = reference_dir
  video = torch.rand(2, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
  with torch.no_grad():
    mean = ref.encode(video).latent_dist.mean
    decoded = ref.decode(mean).sample
  ours = encode(vae, jnp.asarray(to_ours(video)))
  latent_frames = 1 + (frames - 1) // 2  # the tiny config compresses time 2x
  assert ours.shape == (2, latent_frames, 4, 6, 4)
  np.testing.assert_allclose(np.asarray(ours), to_ours(mean), atol=1e-4, rtol=0)
  ours_decoded = decode(vae, jnp.asarray(to_ours(mean)))
  assert ours_decoded.shape == (2, frames, 16, 24, 3)
  np.testing.assert_allclose(np.asarray(ours_decoded), to_ours(decoded), atol=1e-4, rtol=0)
  assert np.abs(to_ours(decoded)).max() > 0.05  # not a trivially zero comparison


def _check_topology(tmp_path, **config):
  """Encode + decode parity for a 3-stage Wan2.1 topology (8x spatial, 4x temporal, 2 res blocks)."""
  ref = _reference(
    **{
      **TINY_WAN_VAE,
      "dim_mult": [1, 2, 4, 4],
      "num_res_blocks": 2,
      "temperal_downsample": [False, True, True],
      **config,
    }
  )
  ref.save_pretrained(str(tmp_path))
  ours = from_checkpoint(str(tmp_path), "vae")
  assert (ours.cfg.spatial_factor, ours.cfg.temporal_factor) == (8, 4)
  video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
  with torch.no_grad():
    mean = ref.encode(video).latent_dist.mean
    decoded = ref.decode(mean).sample
  latents = encode(ours, jnp.asarray(to_ours(video)))
  assert latents.shape == (1, 2, 2, 3, ours.cfg.z_dim)
  np.testing.assert_allclose(np.asarray(latents), to_ours(mean), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(decode(ours, jnp.asarray(to_ours(mean)))), to_ours(decoded), atol=1e-4, rtol=0)


def test_wan21_topology_matches_diffusers(tmp_path):
  _check_topology(tmp_path)  # narrow channels: cheap


@pytest.mark.heavy
def test_wan21_full_width_matches_diffusers(tmp_path):
  _check_topology(tmp_path, base_dim=96, z_dim=16, latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def _with_config(model, **changes):
  """The same weights under a config that only changes how the model runs."""
  other = nnx.eval_shape(lambda: WanVAE(dataclasses.replace(model.cfg, **changes), rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(other)
  return nnx.merge(graphdef, nnx.state(model))


def test_chunked_encode_equals_one_shot(vae):
  video = jax.random.uniform(jax.random.key(1), (1, 17, 8, 12, 3), minval=-1, maxval=1)
  chunked = encode(vae, video)  # 2 frames per scan step
  one_shot = encode(_with_config(vae, encode_chunk_frames=16), video)  # all 16 in one step
  uneven = encode(_with_config(vae, encode_chunk_frames=6), video)  # 6, 6, then a 4-frame tail
  assert chunked.shape == (1, 9, 2, 3, 4)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(one_shot), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(uneven), np.asarray(one_shot), atol=1e-5, rtol=0)
  # Causality: changing the last frames leaves the earlier latents untouched.
  changed = encode(vae, video.at[:, 13:].set(0.0))
  np.testing.assert_array_equal(np.asarray(changed[:, :7]), np.asarray(chunked[:, :7]))
  assert not np.allclose(np.asarray(changed[:, 7:]), np.asarray(chunked[:, 7:]))


def test_chunked_decode_equals_one_shot(vae):
  latents = jax.random.normal(jax.random.key(2), (1, 5, 3, 4, 4))
  one_shot = decode(_with_config(vae, decode_chunk_latents=4), latents)
  np.testing.assert_allclose(np.asarray(decode(vae, latents)), np.asarray(one_shot), atol=1e-5, rtol=0)


def test_tiled_decode_matches_diffusers_tiling(reference_dir):
  ref, _ = reference_dir
  tiled_ref = diffusers.AutoencoderKLWan(**TINY_WAN_VAE, scale_factor_spatial=4).eval()  # the tiny VAE is 4x
  tiled_ref.load_state_dict(ref.state_dict())
  tiled_ref.enable_tiling(
    tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16
  )
  latents = torch.randn(1, 4, 1, 8, 12, generator=torch.Generator().manual_seed(3))  # 2 x 3 tiles
  with torch.no_grad():
    expected = tiled_ref.decode(latents).sample
  ours = from_checkpoint(reference_dir[1], "vae", tile_sample_size=32, tile_sample_stride=16)
  tiled = decode(ours, jnp.asarray(to_ours(latents)), tiled=True)
  assert tiled.shape == (1, 1, 32, 48, 3)
  np.testing.assert_allclose(np.asarray(tiled), to_ours(expected), atol=1e-4, rtol=0)


# Original Wan2.1 `WanVAE_` names, written independently of the converter (test-only rename).
def _original_names(sd, num_res_blocks):
  out = {}
  stage = num_res_blocks + 2
  for key, value in sd.items():
    k = key
    for d, o in (
      (".norm1.", ".residual.0."),
      (".conv1.", ".residual.2."),
      (".norm2.", ".residual.3."),
      (".conv2.", ".residual.6."),
      (".conv_shortcut.", ".shortcut."),
    ):
      k = k.replace(d, o)
    k = k.replace("encoder.conv_in.", "encoder.conv1.").replace("decoder.conv_in.", "decoder.conv1.")
    k = k.replace("quant_conv.", "conv1.") if k.startswith("quant_conv.") else k
    k = k.replace("post_quant_conv.", "conv2.")
    k = k.replace("mid_block.resnets.0.", "middle.0.").replace("mid_block.attentions.0.", "middle.1.")
    k = k.replace("mid_block.resnets.1.", "middle.2.").replace("down_blocks.", "downsamples.")
    k = k.replace("norm_out.", "head.0.").replace("conv_out.", "head.2.")
    parts = k.split(".")
    if parts[:2] == ["decoder", "up_blocks"]:
      i = int(parts[2])
      j = int(parts[4]) if parts[3] == "resnets" else num_res_blocks + 1
      k = ".".join(["decoder", "upsamples", str(i * stage + j), *parts[5:]])
    out[k] = value
  return out


def test_original_names_agree_with_diffusers_own_converter():
  from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

  sd = _reference(num_res_blocks=2).state_dict()  # diffusers' converter assumes 2 res blocks
  back = convert_wan_vae_to_diffusers(_original_names(sd, num_res_blocks=2))
  assert sorted(back) == sorted(sd)


def test_original_pth_loads_identically(reference_dir, vae, tmp_path):
  ref, _ = reference_dir
  path = str(tmp_path / "Wan2.1_VAE.pth")
  torch.save(_original_names(ref.state_dict(), num_res_blocks=1), path)
  cfg = {k: v for k, v in dataclasses.asdict(vae.cfg).items()}
  original = from_checkpoint(path, "vae", **cfg)
  a = nnx.state(vae, nnx.Param).to_pure_dict()
  b = nnx.state(original, nnx.Param).to_pure_dict()
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_bad_inputs_give_clear_errors(reference_dir, vae, tmp_path):
  with pytest.raises(ValueError, match=r"F=4 frames.*2x temporal.*F = 1 \+ 2k"):
    vae.encode(jnp.zeros((1, 4, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"multiples of 4"):
    vae.encode(jnp.zeros((1, 1, 10, 8, 3)))
  with pytest.raises(ValueError, match=r"channels-last"):
    vae.encode(jnp.zeros((1, 3, 1, 8, 8)))
  with pytest.raises(ValueError, match=r"latents"):
    vae.decode(jnp.zeros((1, 1, 2, 2, 3)))
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    nnx.eval_shape(lambda: WanVAE(WanVAEConfig.preset("wan2.1"), rngs=nnx.Rngs(0))).encode(jnp.zeros((1, 80, 8, 8, 3)))
  # A checkpoint saved for another config: the shape error names the key and both shapes.
  _, src = reference_dir
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  bad = tmp_path / "bad"
  bad.mkdir()
  os.symlink(os.path.join(src, "diffusion_pytorch_model.safetensors"), bad / "diffusion_pytorch_model.safetensors")
  (bad / "config.json").write_text(json.dumps({**config, "base_dim": 16}))
  expected = r"shape mismatch at decoder\.conv_in\.bias: checkpoint \(16,\), model expects \(32,\)"
  with pytest.raises(ValueError, match=expected):
    from_checkpoint(str(bad), "vae")
  (bad / "config.json").write_text(json.dumps({**config, "num_res_blocks": 2}))
  with pytest.raises(ValueError, match=r"missing: \['decoder\.up_blocks\.0\.resnets\.2"):
    from_checkpoint(str(bad), "vae")
  (bad / "config.json").write_text(json.dumps({**config, "is_residual": True}))
  with pytest.raises(ValueError, match="is_residual"):
    from_checkpoint(str(bad), "vae")


def test_latent_normalisation():
  cfg = WanVAEConfig.preset("wan2.1")
  vae = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  mean = jnp.asarray(cfg.latents_mean)
  np.testing.assert_allclose(vae.normalize_latents(mean), 0.0, atol=1e-6)
  z = jax.random.normal(jax.random.key(0), (1, 2, 3, 3, 16))
  np.testing.assert_allclose(vae.denormalize_latents(vae.normalize_latents(z)), z, atol=1e-5)
  np.testing.assert_allclose(vae.normalize_latents(mean + jnp.asarray(cfg.latents_std)), 1.0, atol=1e-5)
  assert (cfg.spatial_factor, cfg.temporal_factor) == (8, 4)


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from microverse_jax import sharding
    from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig
    # Random weights without eager initialisers (op-by-op init compiles every shape: slow on CPU).
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: WanVAE(WanVAEConfig.preset("tiny", spatial_axis="tokens"), rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1 + 1 if len(s.shape) == 1 else
                                               rng.normal(size=s.shape) / np.prod(s.shape[:-1]) ** 0.5,
                                               jnp.float32), state)
    vae = nnx.merge(graphdef, state)
    video = jax.random.uniform(jax.random.key(0), (2, 1, 16, 8, 3), minval=-1, maxval=1)
    graphdef, state = nnx.split(vae)
    encode = lambda s, v: nnx.merge(graphdef, s).encode(v)
    fast = {"xla_backend_optimization_level": 0}
    expected = jax.jit(encode, compiler_options=fast)(state, video)
    mesh = sharding.make_mesh({"data": 2, "context": 2})
    with jax.set_mesh(mesh):
      fn = jax.jit(encode, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data", None, "context"))))
      compiled = fn.lower(state, video).compile(fast)
      out = compiled(state, video)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
    hlo = compiled.as_text()
    assert "collective-permute" in hlo, "rows were not split across devices (no conv halo exchange)"
    print("OK", out.sharding.spec)
""")


def test_encode_runs_sharded_over_batch_and_rows(run_on_cpu_devices):
  result = run_on_cpu_devices(["-c", _SHARDED], 4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout
