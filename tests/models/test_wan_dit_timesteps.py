"""Per-token timesteps (Wan2.2 TI2V, diffusers' `expand_timesteps`): WanDiT vs diffusers WanTransformer3DModel.

Tiny TI2V-5B-shaped configs (48 latent channels, FFN 14336/3072 of the width, freq_dim 256), random weights,
converted through our converter; timesteps (B, T) with 0 on frame 0's tokens, as diffusers' Wan2.2 TI2V
pipelines give them. The sharded check runs this file as a script on 4 simulated CPU devices.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

TI2V_TINY = dict(  # diffusers kwargs: Wan2.2-TI2V-5B (convert_wan_to_diffusers.py) at a CPU-test size
  patch_size=(1, 2, 2),
  num_attention_heads=3,
  attention_head_dim=16,
  in_channels=48,
  out_channels=48,
  text_dim=32,
  freq_dim=256,
  ffn_dim=224,
  num_layers=2,
  rope_max_seq_len=32,
)
CASES = [  # (diffusers config overrides, latent (F, H, W), text length)
  (dict(), (3, 4, 6), 7),
  (dict(num_attention_heads=2, attention_head_dim=24, ffn_dim=112, num_layers=3), (5, 6, 4), 5),
]


def first_frame_timesteps(t, grid):
  """(B, T) timesteps as diffusers' TI2V pipelines make them: 0 on frame 0's tokens, t[b] elsewhere."""
  frame = np.arange(int(np.prod(grid))) // (grid[1] * grid[2])  # f-major token order
  return np.where(frame[None] == 0, 0.0, np.asarray(t, np.float32)[:, None]).astype(np.float32)


def _both(tmp_path, overrides, fhw, text_len, seed=0):
  """(torch model, our converted model, latents, context) for a TI2V-shaped tiny config."""
  import torch
  from diffusers import WanTransformer3DModel

  from microverse_jax import convert

  torch.manual_seed(seed)
  tm = WanTransformer3DModel(**{**TI2V_TINY, **overrides}).eval()
  with torch.no_grad():
    for p in tm.parameters():
      p.add_(0.02 * torch.randn_like(p))
  tm.save_pretrained(tmp_path)
  jm = convert.from_checkpoint(str(tmp_path), "dit")
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, *fhw, jm.cfg.in_channels), dtype=np.float32)
  ctx = rng.standard_normal((2, text_len, jm.cfg.text_dim), dtype=np.float32)
  return tm, jm, x, ctx


def _velocity(tm, jm, x, t, ctx):
  """(ours, diffusers') velocity (B, F, H, W, C_out) for timesteps t: (B,) or (B, T)."""
  import jax.numpy as jnp
  import torch

  with torch.no_grad():
    ref = tm(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(ctx)).sample
  out = jm(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
  return np.asarray(out), ref.permute(0, 2, 3, 4, 1).numpy()


@pytest.mark.parametrize("overrides,fhw,text_len", CASES)
def test_per_token_timesteps_match_diffusers(tmp_path, overrides, fhw, text_len):
  tm, jm, x, ctx = _both(tmp_path, overrides, fhw, text_len)
  grid = tuple(s // p for s, p in zip(fhw, jm.cfg.patch_size))
  outs = {}
  for t in (first_frame_timesteps([3.0, 871.5], grid), np.array([3.0, 871.5], np.float32)):
    outs[t.ndim], ref = _velocity(tm, jm, x, t, ctx)
    assert outs[t.ndim].shape == ref.shape == (*x.shape[:-1], 48)
    err = np.abs(outs[t.ndim] - ref).max()
    print(f"timesteps {t.shape}: max abs diff {err:.2e} (|ref| max {np.abs(ref).max():.2f})")
    assert err <= 1e-4, (t.shape, err)
    assert np.abs(ref).max() > 0.1  # a non-degenerate comparison
  # The per-token values matter: frame 0 at t = 0 differs from frame 0 at t = 871.5.
  assert np.abs(outs[2][1, 0] - outs[1][1, 0]).max() > 1e-2


def test_constant_per_token_timesteps_equal_per_sample():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

  model = WanDiT(WanDiTConfig.preset("tiny", in_channels=48, out_channels=48, freq_dim=256), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 6, 48))
  ctx = jax.random.normal(jax.random.key(2), (2, 5, 32))
  t = jnp.array([10.0, 900.0])
  per_sample = model(x, t, ctx)
  per_token = model(x, jnp.broadcast_to(t[:, None], (2, 3 * 2 * 3)), ctx)
  np.testing.assert_allclose(np.asarray(per_token), np.asarray(per_sample), rtol=0, atol=2e-6)

  def loss(m):
    return jnp.mean(m(x, jnp.asarray(first_frame_timesteps([10.0, 900.0], (3, 2, 3))), ctx) ** 2)

  for path, g in nnx.to_flat_state(nnx.grad(loss)(model)):
    assert float(jnp.abs(g[...]).max()) > 0, f"no gradient reaches {path}"


def test_bad_timestep_shape_names_both_accepted_shapes():
  import jax.numpy as jnp
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

  model = WanDiT(WanDiTConfig.preset("tiny"), rngs=nnx.Rngs(0))
  x, ctx = jnp.zeros((2, 3, 4, 6, 4)), jnp.zeros((2, 5, 32))
  for t in (jnp.zeros((2, 17)), jnp.zeros((1,)), jnp.zeros((2, 3, 6))):
    with pytest.raises(ValueError, match=r"timesteps: expected shape \(2,\) or \(2, 18\) \(one per token of grid"):
      model(x, t, ctx)


def test_ti2v_preset_parameter_count_matches_diffusers():
  import jax
  import torch
  from diffusers import WanTransformer3DModel
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

  c = WanDiTConfig.preset("ti2v-5b")
  ours = nnx.eval_shape(lambda: WanDiT(c, rngs=nnx.Rngs(0)))
  n_ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  with torch.device("meta"):  # diffusers' Wan2.2-TI2V-5B transformer config
    ref = WanTransformer3DModel(
      num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30
    )
  assert n_ours == sum(p.numel() for p in ref.parameters())
  assert 4.9e9 < n_ours < 5.1e9


def _sharded_checks():
  """Per-token timesteps under meshes with token (context) and batch sharding equal the unsharded model."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig
  from microverse_jax.sharding import make_mesh

  model = WanDiT(WanDiTConfig.preset("tiny", num_heads=4, in_channels=48, out_channels=48), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 8, 48), np.float32))
  ctx = jnp.asarray(rng.standard_normal((2, 5, 32), np.float32))
  t = jnp.asarray(first_frame_timesteps([10.0, 900.0], (3, 2, 4)))
  run = lambda state, t: nnx.merge(graphdef, state)(x, t, ctx)
  ref = jax.jit(run)(state, t)
  errs = {}
  for name, mesh in {"context4": {"context": 4}, "data2_context2": {"data": 2, "context": 2}}.items():
    mesh = make_mesh(mesh)
    with jax.set_mesh(mesh):  # the output replicated: XLA may otherwise pick a layout the mesh cannot name
      got = jax.jit(run, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(state, t)
    errs[name] = float(jnp.abs(got - ref).max())
  print("ERRS " + json.dumps(errs))


def test_per_token_timesteps_sharded_equal_unsharded(run_on_cpu_devices):
  proc = run_on_cpu_devices([os.path.abspath(__file__)], 4)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("ERRS ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  errs = json.loads(lines[-1][len("ERRS ") :])
  assert errs and max(errs.values()) < 2e-5, errs


if __name__ == "__main__":
  _sharded_checks()
