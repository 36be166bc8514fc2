"""WanDiT vs diffusers WanTransformer3DModel on random weights, converted through our converter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from flax import nnx
from tiny_diffusers import TINY_WAN_DIT  # noqa: E402

from microverse_jax import convert
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

TINY = TINY_WAN_DIT
CASES = [  # (diffusers config overrides, latent (F, H, W), text length)
  (dict(), (3, 8, 12), 7),
  (dict(num_attention_heads=3, attention_head_dim=24, out_channels=6, num_layers=3), (5, 6, 4), 5),
  (dict(patch_size=(2, 2, 2), attention_head_dim=12, text_dim=20, cross_attn_norm=False), (4, 10, 6), 9),
]


def _torch_model(seed, **overrides):
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**{**TINY, **overrides}).eval()
  with torch.no_grad():  # make every parameter non-trivial (diffusers zero-inits nothing, but be sure)
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model


def _run_both(tmp_path, overrides, fhw, text_len, seed=0):
  tm = _torch_model(seed, **overrides)
  tm.save_pretrained(tmp_path)
  jm = convert.from_checkpoint(str(tmp_path), "dit")
  cfg = jm.cfg
  rng = np.random.default_rng(seed)
  b = 2
  x = rng.standard_normal((b, *fhw, cfg.in_channels), dtype=np.float32)
  t = np.array([3.0, 871.5], np.float32)
  ctx = rng.standard_normal((b, text_len, cfg.text_dim), dtype=np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(ctx)).sample
  ref = ref.permute(0, 2, 3, 4, 1).numpy()
  out = np.asarray(jm(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
  return tm, jm, out, ref


@pytest.mark.parametrize("overrides,fhw,text_len", CASES)
def test_matches_diffusers(tmp_path, overrides, fhw, text_len):
  _, _, out, ref = _run_both(tmp_path, overrides, fhw, text_len)
  assert out.shape == ref.shape
  err = np.abs(out - ref).max()
  assert err <= 1e-4, err
  assert np.abs(ref).max() > 0.1  # a non-degenerate comparison


def test_original_wan_layout_loads_identically(tmp_path):
  tm = _torch_model(1)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  inverse = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "attn1.": "self_attn.",
    "attn2.": "cross_attn.",
    "to_out.0.": "o.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "norm2": "normX",
    "norm3": "norm2",
    "normX": "norm3",
    "proj_out": "head.head",
  }
  orig = {}
  for k, v in sd.items():
    for a, b in inverse.items():
      k = k.replace(a, b)
    k = k.replace("blocks.0.scale_shift_table", "blocks.0.modulation").replace(
      "blocks.1.scale_shift_table", "blocks.1.modulation"
    )
    k = "head.modulation" if k == "scale_shift_table" else k
    orig[k] = np.ascontiguousarray(v)
  from safetensors.numpy import save_file

  save_file(orig, str(tmp_path / "diffusion_pytorch_model.safetensors"))
  (tmp_path / "config.json").write_text(
    json.dumps(
      dict(
        dim=32,
        ffn_dim=64,
        freq_dim=32,
        in_dim=4,
        out_dim=4,
        num_heads=2,
        num_layers=2,
        text_dim=32,
        eps=1e-6,
        patch_size=[1, 2, 2],
      )
    )
  )
  ours = convert.from_checkpoint(str(tmp_path), "dit", rope_max_seq_len=32)
  ref_dir = tmp_path / "ref"
  tm.save_pretrained(ref_dir)
  want = convert.from_checkpoint(str(ref_dir), "dit")
  a = nnx.to_flat_state(nnx.state(ours, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(want, nnx.Param)))
  for path, v in a:
    np.testing.assert_array_equal(np.asarray(v[...]), np.asarray(b[path][...]), err_msg=str(path))


def test_gradients_reach_every_parameter():
  model = WanDiT(WanDiTConfig.preset("tiny"), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 6, 4))
  ctx = jax.random.normal(jax.random.key(2), (2, 5, 32))

  def loss(m):
    return jnp.mean(m(x, jnp.array([10.0, 900.0]), ctx) ** 2)

  grads = nnx.grad(loss)(model)
  for path, g in nnx.to_flat_state(grads):
    assert float(jnp.abs(g[...]).max()) > 0, f"no gradient reaches {path}"


@pytest.mark.parametrize("name", ["1.3B", "14B"])
def test_parameter_count_matches_diffusers(name):
  ours = nnx.eval_shape(lambda: WanDiT(WanDiTConfig.preset(name), rngs=nnx.Rngs(0)))
  n_ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  c = WanDiTConfig.preset(name)
  with torch.device("meta"):
    ref = WanTransformer3DModel(
      num_attention_heads=c.num_heads,
      attention_head_dim=c.head_dim,
      ffn_dim=c.ffn_dim,
      num_layers=c.num_layers,
      text_dim=c.text_dim,
    )
  assert n_ours == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize(
  "shape,ctx_shape,match",
  [
    ((1, 2, 4, 4, 3), (1, 5, 32), "channels-last"),
    ((1, 2, 5, 4, 4), (1, 5, 32), "not divisible by the patch"),
    ((1, 2, 4, 4, 4), (1, 5, 31), r"context: expected \(B, L, 32\)"),
  ],
)
def test_bad_input_names_what_was_expected(shape, ctx_shape, match):
  model = WanDiT(WanDiTConfig.preset("tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    model(jnp.zeros(shape), jnp.zeros((shape[0],)), jnp.zeros(ctx_shape))


def test_converter_errors_and_cli_round_trip(tmp_path):
  tm = _torch_model(2)
  tm.save_pretrained(tmp_path / "src")
  # CLI round trip: convert, then load into a fresh model.
  convert.main(["dit", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst")])
  meta = json.loads((tmp_path / "dst" / "config.json").read_text())
  fresh = WanDiT(
    WanDiTConfig(
      **{
        **meta["config"],
        "patch_size": tuple(meta["config"]["patch_size"]),
        "lora_targets": tuple(meta["config"]["lora_targets"]),
      }
    ),
    rngs=nnx.Rngs(9),
  )
  convert.load_params(str(tmp_path / "dst"), fresh)
  direct = convert.from_checkpoint(str(tmp_path / "src"), "dit")
  for (p, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(fresh, nnx.Param)), nnx.to_flat_state(nnx.state(direct, nnx.Param))
  ):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
  # A missing key and a shape mismatch are named.
  from safetensors.numpy import load_file, save_file

  st = tmp_path / "src" / "diffusion_pytorch_model.safetensors"
  sd = load_file(str(st))
  del sd["blocks.1.ffn.net.2.bias"]
  save_file(sd, str(st))
  with pytest.raises(ValueError, match="blocks.1.ffn.net.2.bias"):
    convert.from_checkpoint(str(tmp_path / "src"), "dit")
  sd["blocks.1.ffn.net.2.bias"] = np.zeros((5,), np.float32)
  save_file(sd, str(st))
  with pytest.raises(ValueError, match=r"shape mismatch at blocks.\*.ffn_out.bias"):
    convert.from_checkpoint(str(tmp_path / "src"), "dit")
  sd["blocks.0.ffn.net.2.bias"] = np.zeros((5,), np.float32)
  save_file(sd, str(st))
  with pytest.raises(ValueError, match=r"blocks.ffn_out.bias: checkpoint \(2, 5\), model \(2, 32\)"):
    convert.from_checkpoint(str(tmp_path / "src"), "dit")
