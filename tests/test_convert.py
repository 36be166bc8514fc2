"""One weight-loading API for both formats (converted Orbax dirs and PyTorch checkpoints), and
PEFT LoRA import (DiffSynth / MicroVerse step-N.safetensors, diffusers naming)."""

import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.numpy import save_file  # noqa: E402
from tiny_diffusers import TINY_WAN_DIT, TINY_WAN_VAE  # noqa: E402

from microverse_jax import convert  # noqa: E402
from microverse_jax.models.lora import merge_lora  # noqa: E402
from microverse_jax.models.wan_dit import WanDiT  # noqa: E402

TINY = TINY_WAN_DIT
# diffusers -> original Wan / DiffSynth names (what DiffSynth's WanModel calls its modules).
TO_ORIGINAL = (
  ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
  ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
  ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
  ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
  ("condition_embedder.time_proj", "time_projection.1"),
  ("attn1.", "self_attn."),
  ("attn2.", "cross_attn."),
  ("to_out.0.", "o."),
  ("to_q.", "q."),
  ("to_k.", "k."),
  ("to_v.", "v."),
  ("ffn.net.0.proj", "ffn.0"),
  ("ffn.net.2", "ffn.2"),
  ("norm2", "normX"),
  ("norm3", "norm2"),
  ("normX", "norm3"),
  ("proj_out", "head.head"),
)


def to_original(key: str) -> str:
  for a, b in TO_ORIGINAL:
    key = key.replace(a, b)
  key = key.replace(".scale_shift_table", ".modulation")
  return "head.modulation" if key == "scale_shift_table" else key


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = diffusers.WanTransformer3DModel(**TINY).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("dit") / "diffusers"
  model.save_pretrained(path)
  return str(path)


@pytest.fixture(scope="module")
def converted_dir(dit_dir, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp("dit") / "converted")
  convert.main(["dit", "--src", dit_dir, "--dst", dst])
  return dst


def _target(cfg, sharded=True):
  abstract = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, convert.BASE_PARAMS).to_pure_dict()
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P()) if sharded else None
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state)


def test_both_formats_give_the_same_config_and_weights(dit_dir, converted_dir, capsys):
  cfg = convert.checkpoint_config(dit_dir, "dit")
  assert cfg == convert.checkpoint_config(converted_dir, "dit")
  assert (cfg.num_heads, cfg.head_dim, cfg.num_layers, cfg.ffn_dim) == (2, 16, 2, 64)
  target = _target(cfg)
  from_torch = convert.restore_params(dit_dir, target)  # kind inferred from the target
  assert "loaded dit weights from PyTorch checkpoint (diffusers layout)" in capsys.readouterr().out
  from_orbax = convert.restore_params(converted_dir, target, kind="dit")
  assert "loaded dit weights from converted Orbax checkpoint" in capsys.readouterr().out
  leaves = jax.tree.leaves(from_torch)
  assert all(isinstance(x.sharding, NamedSharding) for x in leaves)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), from_torch, from_orbax)
  # from_checkpoint takes either format too.
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    nnx.state(convert.from_checkpoint(dit_dir, "dit"), nnx.Param).to_pure_dict(),
    nnx.state(convert.from_checkpoint(converted_dir, "dit"), nnx.Param).to_pure_dict(),
  )


@pytest.mark.parametrize("source", ["pytorch", "converted"])
def test_mismatch_is_one_error_listing_keys_and_both_shapes(dit_dir, converted_dir, source):
  src = dit_dir if source == "pytorch" else converted_dir
  cfg = convert.checkpoint_config(src, "dit")
  import dataclasses

  target = _target(dataclasses.replace(cfg, ffn_dim=48, cross_attn_norm=False), sharded=False)
  with pytest.raises(ValueError) as e:
    convert.restore_params(src, target, kind="dit")
  msg = str(e.value)
  assert msg.startswith(f"{src}: checkpoint does not match the model")
  assert "unexpected (2): ['blocks.norm2.bias', 'blocks.norm2.scale']" in msg
  assert "blocks.ffn_in.kernel: checkpoint (2, 32, 64), model (2, 32, 48)" in msg
  assert "blocks.ffn_out.kernel: checkpoint (2, 64, 32), model (2, 48, 32)" in msg
  assert "Structure mismatch" not in msg


def test_kind_and_path_errors_name_what_was_expected(dit_dir, converted_dir, tmp_path):
  with pytest.raises(ValueError, match=r"a converted 'dit' checkpoint, but a 'vae' checkpoint was expected"):
    convert.checkpoint_config(converted_dir, "vae")
  with pytest.raises(ValueError, match=r"kind='unet'"):
    convert.checkpoint_config(dit_dir, "unet")
  for bad, why in ((tmp_path / "nope", "no such file or directory"), (tmp_path, "no checkpoint in this directory")):
    with pytest.raises(
      FileNotFoundError,
      match=rf"{bad}: {why}; expected a converted checkpoint \(params/ "
      r"\+ config.json.*diffusers/transformers.*\.pth/\.safetensors",
    ):
      convert.restore_params(str(bad), {}, kind="dit")
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="notes.txt: not a checkpoint file"):
    convert.checkpoint_config(str(tmp_path / "notes.txt"), "dit")


def test_diffsynth_full_checkpoint_loads_through_the_same_path(dit_dir, tmp_path, capsys):
  """A DiffSynth / original-Wan named single file without config.json: config inferred from shapes."""
  sd = convert.read_checkpoint(dit_dir)
  path = str(tmp_path / "step-100.safetensors")
  save_file({to_original(k): np.ascontiguousarray(v) for k, v in sd.items()}, path)
  cfg = convert.checkpoint_config(path, "dit", head_dim=16)  # Wan2.1's head_dim is 128; tiny is 16
  assert cfg == convert.checkpoint_config(dit_dir, "dit", rope_max_seq_len=1024)
  got = convert.restore_params(path, _target(cfg), kind="dit")
  assert "original Wan / DiffSynth layout" in capsys.readouterr().out
  want = convert.restore_params(dit_dir, _target(cfg), kind="dit")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
  with pytest.raises(ValueError, match="model width 32 is not a multiple of head_dim 128"):
    convert.checkpoint_config(path, "dit")


def test_vae_and_umt5_load_from_either_format(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  diffusers.AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(tmp_path / "vae")
  transformers.UMT5EncoderModel(
    transformers.UMT5Config(
      vocab_size=50,
      d_model=16,
      d_kv=4,
      d_ff=24,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
    )
  ).save_pretrained(tmp_path / "umt5")
  for kind in ("vae", "umt5"):
    src = str(tmp_path / kind)
    model = convert.from_checkpoint(src, kind)
    convert.save_params(model, str(tmp_path / f"{kind}_converted"), kind)
    again = convert.from_checkpoint(str(tmp_path / f"{kind}_converted"), kind)
    assert again.cfg == model.cfg
    jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
      nnx.state(model, nnx.Param).to_pure_dict(),
      nnx.state(again, nnx.Param).to_pure_dict(),
    )
    assert again.cfg.z_dim == 4 if kind == "vae" else True


# ---------------------------------------------------------------------------------------------
# LoRA import
# ---------------------------------------------------------------------------------------------
MODULES = {
  "self_attn.q": 32,
  "self_attn.k": 32,
  "self_attn.v": 32,
  "self_attn.o": 32,
  "cross_attn.q": 32,
  "cross_attn.k": 32,
  "cross_attn.v": 32,
  "cross_attn.o": 32,
  "ffn.0": 64,
  "ffn.2": 32,
}
IN_DIM = {"ffn.2": 64}
DIFFUSERS_NAMES = {
  **{f"{o}.{n}": f"{d}.to_{n}" for o, d in (("self_attn", "attn1"), ("cross_attn", "attn2")) for n in "qkv"},
  "self_attn.o": "attn1.to_out.0",
  "cross_attn.o": "attn2.to_out.0",
  "ffn.0": "ffn.net.0.proj",
  "ffn.2": "ffn.net.2",
}


def _peft_lora(rank, seed, layers=2):
  """DiffSynth-style PEFT tensors {blocks.i.module: (A (r, in), B (out, r))}, B nonzero."""
  rng = np.random.default_rng(seed)
  return {
    f"blocks.{i}.{m}": (
      rng.standard_normal((rank, IN_DIM.get(m, 32))).astype(np.float32) * 0.1,
      rng.standard_normal((out, rank)).astype(np.float32) * 0.1,
    )
    for i in range(layers)
    for m, out in MODULES.items()
  }


def _merged_dir(dit_dir, lora, scale, dst):
  """The diffusers checkpoint with W += scale * B @ A applied in torch naming (the oracle)."""
  sd = {k: np.array(v) for k, v in convert.read_checkpoint(dit_dir).items()}
  original = {to_original(k): k for k in sd}
  for module, (a, b) in lora.items():
    sd[original[f"{module}.weight"]] += scale * b @ a
  os.makedirs(dst)
  save_file(sd, os.path.join(dst, "diffusion_pytorch_model.safetensors"))
  with open(os.path.join(dit_dir, "config.json")) as f:
    (dst / "config.json").write_text(f.read())
  return str(dst)


def _lora_model(dit_dir, rank, alpha):
  return convert.from_checkpoint(dit_dir, "dit", lora_rank=rank, lora_alpha=alpha)


def _assert_same_kernels(model, reference):
  got = nnx.state(merge_lora(model) if model.cfg.lora_rank else model, nnx.Param).to_pure_dict()
  want = nnx.state(reference, nnx.Param).to_pure_dict()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6), got, want)


def test_diffsynth_lora_directory_loads_its_highest_step(dit_dir, tmp_path, capsys):
  lora = _peft_lora(rank=4, seed=1)
  runs = tmp_path / "runs"
  runs.mkdir()
  save_file(
    {f"{k}.lora_{ab}.default.weight": v for k, (a, b) in lora.items() for ab, v in (("A", a), ("B", b))},
    str(runs / "step-10.safetensors"),
  )
  save_file(
    {
      f"{k}.lora_{ab}.default.weight": 0 * v for k, (a, b) in _peft_lora(4, 2).items() for ab, v in (("A", a), ("B", b))
    },
    str(runs / "step-9.safetensors"),
  )
  assert convert.latest_lora(str(runs)) == str(runs / "step-10.safetensors")
  model = _lora_model(dit_dir, rank=8, alpha=32.0)  # file rank 4 < model rank 8; alpha/rank 4 != 1
  assert convert.load_lora(str(runs), model).endswith("step-10.safetensors")
  assert "into the LoRA params" in capsys.readouterr().out
  reference = convert.from_checkpoint(_merged_dir(dit_dir, lora, 1.0, tmp_path / "merged"), "dit")
  _assert_same_kernels(model, reference)
  plain = convert.from_checkpoint(dit_dir, "dit")  # a model without LoRA gets the delta merged
  convert.load_lora(str(runs / "step-10.safetensors"), plain)
  _assert_same_kernels(plain, reference)


def test_diffusers_named_lora_with_alpha_entries(dit_dir, tmp_path):
  lora = _peft_lora(rank=4, seed=3)
  sd = {}
  for key, (a, b) in lora.items():
    _, i, module = key.split(".", 2)
    name = DIFFUSERS_NAMES[module]
    sd[f"transformer.blocks.{i}.{name}.lora_down.weight"] = a
    sd[f"transformer.blocks.{i}.{name}.lora_up.weight"] = b
    sd[f"transformer.blocks.{i}.{name}.alpha"] = np.asarray(2.0, np.float32)  # scale 2 / 4
  save_file(sd, str(tmp_path / "lora.safetensors"))
  model = _lora_model(dit_dir, rank=4, alpha=4.0)
  convert.load_lora(str(tmp_path / "lora.safetensors"), model)
  _assert_same_kernels(model, convert.from_checkpoint(_merged_dir(dit_dir, lora, 0.5, tmp_path / "m"), "dit"))


def test_lora_errors_name_the_problem(dit_dir, tmp_path):
  lora = _peft_lora(rank=4, seed=4)
  keep = {k: v for k, v in lora.items() if not k.endswith("ffn.2")}
  save_file(
    {f"{k}.lora_{ab}.weight": v for k, (a, b) in keep.items() for ab, v in (("A", a), ("B", b))},
    str(tmp_path / "partial.safetensors"),
  )
  model = _lora_model(dit_dir, rank=4, alpha=4.0)
  with pytest.raises(ValueError, match=r"(?s)partial.safetensors: LoRA does not fit.*missing from the file.*'ffn_out'"):
    convert.load_lora(str(tmp_path / "partial.safetensors"), model)
  convert.load_lora(str(tmp_path / "partial.safetensors"), model, strict=False)
  assert float(np.abs(np.asarray(model.blocks.ffn_out.lora_b[...])).max()) == 0.0
  small = _lora_model(dit_dir, rank=2, alpha=2.0)
  with pytest.raises(ValueError, match=r"(?s)self_attn.q: file rank 4 > model lora_rank 2"):
    convert.load_lora(str(tmp_path / "partial.safetensors"), small)
  save_file({"blocks.0.patch_embedding.lora_A.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "odd.safetensors"))
  with pytest.raises(ValueError, match=r"odd.safetensors: LoRA keys that match no LoRA target"):
    convert.load_lora(str(tmp_path / "odd.safetensors"), model)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty: no step-N.safetensors LoRA file"):
    convert.load_lora(str(tmp_path / "empty"), model)
  with pytest.raises(FileNotFoundError, match=r"nope.safetensors: no such LoRA file"):
    convert.load_lora(str(tmp_path / "nope.safetensors"), model)


@pytest.mark.hostile
def test_pth_files_are_read_only_with_a_torch_that_refuses_pickled_code(tmp_path, monkeypatch):
  import torch

  path = tmp_path / "w.pth"
  torch.save({"a": torch.ones(2)}, path)
  assert convert.read_checkpoint(str(path))["a"].tolist() == [1.0, 1.0]
  monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
  with pytest.raises(ValueError, match=r"torch 2.5.1\+cpu is too old.*>= 2.6"):
    convert.read_checkpoint(str(path))
