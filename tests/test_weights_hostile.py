"""Weight files on hostile input (issue 29): malformed safetensors and .pth files, configs that build no
model, weights no float parameter should take, FIFOs, and LoRA files that disagree with themselves.
Each is one ValueError naming the file and the problem, so the CLI prints one line."""

import json
import os
import struct
import threading

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from microverse_jax import cli, convert, export
from microverse_jax.models.lora import WAN_BLOCK_MODULES
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

pytestmark = pytest.mark.hostile
ST_NAMES = {
  np.dtype(np.float32): "F32",
  np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
  np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2",
  np.dtype(np.int8): "I8",
  np.dtype(np.bool_): "BOOL",
}
WEIGHTS = "diffusion_pytorch_model.safetensors"


def write_safetensors(path, tensors: dict) -> str:
  """A safetensors file written by hand, for the dtypes `safetensors.numpy` does not write (fp8)."""
  header, body = {}, b""
  for key, value in tensors.items():
    data = np.ascontiguousarray(value).tobytes()
    header[key] = {
      "dtype": ST_NAMES[value.dtype],
      "shape": list(value.shape),
      "data_offsets": [len(body), len(body) + len(data)],
    }
    body += data
  return raw_safetensors(path, json.dumps(header).encode(), body)


def raw_safetensors(path, header: bytes, body: bytes = b"", length: int | None = None) -> str:
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header) if length is None else length) + header + body)
  return str(path)


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
  """A tiny WanDiT as a diffusers directory (config.json + safetensors), written without torch."""
  model = WanDiT(WanDiTConfig.preset("tiny"), rngs=nnx.Rngs(0))
  return export.export_diffusers(model, str(tmp_path_factory.mktemp("dit") / "diffusers"))


def copy_with(dit_dir, dst, change=None, config=None):
  """`dit_dir` with tensors replaced (`change`: key -> array, written by hand) or config.json replaced."""
  os.makedirs(dst)
  sd = {k: np.array(v) for k, v in convert.read_checkpoint(dit_dir).items()}
  write_safetensors(os.path.join(dst, WEIGHTS), {**sd, **(change or {})})
  with open(os.path.join(dit_dir, "config.json")) as f:
    text = f.read()
  with open(os.path.join(dst, "config.json"), "w") as f:
    f.write(text if config is None else config(json.loads(text)))
  return str(dst)


def one_cli_line(capsys, src, tmp_path) -> str:
  """What `python -m microverse_jax.convert dit --src SRC` prints: exit status 2 and one line."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main_guard(convert.main, ["dit", "--src", str(src), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
  return err


@pytest.mark.parametrize(
  "name, make, message",
  [
    ("short", lambda p: p.write_bytes(b"abc"), r"3 bytes, less than the 8-byte header length"),
    ("list", lambda p: raw_safetensors(p, b"[1, 2]"), r"header: a JSON list, not an object"),
    (
      "huge",
      lambda p: raw_safetensors(p, b"{}", length=1 << 62),
      r"header length 4611686018427387904; 2 bytes follow, limit 100000000",
    ),
    ("garbage", lambda p: raw_safetensors(p, b"\xff{"), r"bad safetensors header"),
    (
      "twice",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, "w": {}}', b"1234"),
      r"keys given twice: \['w'\]",
    ),
    (
      "complex",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}', b"\0" * 8),
      r"tensor 'w': unsupported dtype 'C64'",
    ),
    (
      "negative_offsets",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [-8, -4]}}', b"\0" * 8),
      r"tensor 'w': data_offsets \[-8, -4\] are not two non-negative integers",
    ),
    (
      "negative_shape",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}', b"\0" * 8),
      r"tensor 'w': shape \[-1\] is not a list of non-negative integers",
    ),
    (
      "truncated",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8),
      r"tensor 'w': data_offsets \[0, 16\] outside the 8 data bytes",
    ),
    (
      "size",
      lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8),
      r"tensor 'w': 8 bytes for F32 of shape \[3\] \(12 bytes\)",
    ),
  ],
)
def test_malformed_safetensors_are_one_named_error(tmp_path, capsys, name, make, message):
  path = tmp_path / f"{name}.safetensors"
  make(path)
  with pytest.raises(ValueError, match=rf"{name}.safetensors: .*{message}"):
    convert.read_checkpoint(str(path))
  assert f"{name}.safetensors" in one_cli_line(capsys, path, tmp_path)


def test_sharded_checkpoints_refuse_a_tensor_twice_and_files_outside(tmp_path):
  save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "a.safetensors"))
  save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "b.safetensors"))
  with pytest.raises(ValueError, match=r"tensor 'w' is in both .*a.safetensors and .*b.safetensors"):
    convert.read_checkpoint(str(tmp_path))
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../a.safetensors"}}))
  with pytest.raises(ValueError, match=r"m.safetensors.index.json: weight_map must map tensor names to file names"):
    convert.read_checkpoint(str(tmp_path))
  (tmp_path / "m.safetensors.index.json").write_text("[]")
  with pytest.raises(ValueError, match=r"m.safetensors.index.json: a JSON list, not an object"):
    convert.read_checkpoint(str(tmp_path))


def test_pth_files_that_are_not_tensor_dicts_are_one_named_error(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  ran = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {ran}",))

  torch.save({"w": Payload()}, tmp_path / "code.pth")
  with pytest.raises(ValueError, match=r"code.pth: refused, not a tensors-only .* unsupported GLOBAL posix.system"):
    convert.read_checkpoint(str(tmp_path / "code.pth"))
  assert "code.pth: refused" in one_cli_line(capsys, tmp_path / "code.pth", tmp_path)
  assert not ran.exists()
  (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError, match=r"garbage.pth: refused, not a tensors-only torch file"):
    convert.read_checkpoint(str(tmp_path / "garbage.pth"))
  (tmp_path / "empty.pth").write_bytes(b"")
  with pytest.raises(ValueError, match=r"empty.pth: not a readable torch checkpoint \(EOFError"):
    convert.read_checkpoint(str(tmp_path / "empty.pth"))
  torch.save([torch.ones(2)], tmp_path / "list.pth")
  with pytest.raises(ValueError, match=r"list.pth: not a state dict \(a list"):
    convert.read_checkpoint(str(tmp_path / "list.pth"))
  torch.save({"a": {"b": torch.ones(2)}, "step": 3}, tmp_path / "nested.pth")
  with pytest.raises(
    ValueError, match=r"nested.pth: not a flat state dict of tensors: \[\"'a': dict\", \"'step': int\"\]"
  ):
    convert.read_checkpoint(str(tmp_path / "nested.pth"))
  torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  assert convert.read_checkpoint(str(tmp_path / "legacy.pth"))["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
  "config, message",
  [
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "freq_dim"}), r"config.json: missing key 'freq_dim'"),
    (lambda c: json.dumps({**c, "num_layers": "two"}), r"config.json: num_layers='two' does not fit int"),
    (lambda c: json.dumps({**c, "num_layers": -1}), r"config.json: num_layers=-1 does not fit int"),
    (lambda c: json.dumps({**c, "eps": True}), r"config.json: eps=True does not fit float"),
    (lambda c: json.dumps({**c, "patch_size": 2}), r"config.json: a value of the wrong type"),
    (lambda c: json.dumps([c]), r"config.json: a JSON list, not an object"),
    (lambda c: "{", r"config.json: not valid JSON"),
  ],
)
def test_a_config_that_builds_no_model_names_the_file_and_key(dit_dir, tmp_path, capsys, config, message):
  src = copy_with(dit_dir, tmp_path / "src", config=config)
  with pytest.raises(ValueError, match=message):
    convert.checkpoint_config(src, "dit")
  with pytest.raises(ValueError, match=message):
    convert.from_checkpoint(src, "dit")
  assert "config.json" in one_cli_line(capsys, src, tmp_path)


def test_a_converted_config_that_builds_no_model_names_the_file_and_key(dit_dir, tmp_path):
  dst = tmp_path / "converted"
  convert.main(["dit", "--src", dit_dir, "--out", str(dst)])
  meta = json.loads((dst / "config.json").read_text())
  (dst / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "num_heads": 2.5}}))
  with pytest.raises(ValueError, match=r"converted/config.json: num_heads=2.5 does not fit int"):
    convert.checkpoint_config(str(dst), "dit")


def test_fp8_weights_load_as_their_values(dit_dir, tmp_path):
  sd = convert.read_checkpoint(dit_dir)
  fp8 = {
    "blocks.0.attn1.to_q.weight": sd["blocks.0.attn1.to_q.weight"].astype(ml_dtypes.float8_e4m3fn),
    "blocks.1.ffn.net.2.weight": sd["blocks.1.ffn.net.2.weight"].astype(ml_dtypes.float8_e5m2),
  }
  src = copy_with(dit_dir, tmp_path / "fp8", fp8)
  model = convert.from_checkpoint(src, "dit")
  q, ffn = np.asarray(model.blocks.self_attn.q.kernel[...]), np.asarray(model.blocks.ffn_out.kernel[...])
  np.testing.assert_array_equal(q[0], fp8["blocks.0.attn1.to_q.weight"].astype(np.float32).T)
  np.testing.assert_array_equal(ffn[1], fp8["blocks.1.ffn.net.2.weight"].astype(np.float32).T)
  np.testing.assert_array_equal(q[1], sd["blocks.1.attn1.to_q.weight"].T)


@pytest.mark.parametrize(
  "value, message",
  [
    (
      np.ones((32, 32), np.int8),
      "tensors not stored as floats (no parameter takes them): ['blocks.0.attn1.to_q.weight (int8)']",
    ),
    (
      np.ones((32, 32), np.bool_),
      "tensors not stored as floats (no parameter takes them): ['blocks.0.attn1.to_q.weight (bool)']",
    ),
    (np.full((32, 32), np.inf, np.float32), "blocks.self_attn.q.kernel holds NaN or inf values (float32)"),
  ],
)
def test_weights_no_float_parameter_should_take_are_refused(dit_dir, tmp_path, capsys, value, message):
  """Layer 0 of a stacked kernel: an int8 layer would be promoted to float by the stacking."""
  src = copy_with(dit_dir, tmp_path / "bad", {"blocks.0.attn1.to_q.weight": value})
  with pytest.raises(ValueError) as refused:
    convert.from_checkpoint(src, "dit")
  assert str(refused.value) == f"{src}: {message}"
  assert one_cli_line(capsys, src, tmp_path) == f"error: {src}: {message}"


def test_a_fifo_or_folder_named_like_a_checkpoint_file_is_refused_not_read(models, tmp_path):
  os.mkfifo(tmp_path / WEIGHTS)
  result = []

  def read():
    try:
      convert.read_checkpoint(str(tmp_path))
    except Exception as e:  # noqa: BLE001  # handed to the test thread
      result.append(e)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  reader.join(timeout=30)
  if reader.is_alive():
    with open(tmp_path / WEIGHTS, "wb"):  # unblocks the reader's open()
      pass
    pytest.fail("reading a FIFO named *.safetensors hung")
  assert isinstance(result[0], ValueError), result
  assert (
    str(result[0])
    == f"{tmp_path / WEIGHTS}: not a regular file (a directory, FIFO, socket or device); refusing to read it"
  )
  os.mkfifo(tmp_path / "step-5.safetensors")
  with pytest.raises(ValueError, match=r"step-5.safetensors: not a regular file"):
    convert.load_lora(str(tmp_path / "step-5.safetensors"), models[0])
  os.remove(tmp_path / WEIGHTS)
  os.mkdir(tmp_path / WEIGHTS)
  save_file({"w": np.zeros(1, np.float32)}, str(tmp_path / WEIGHTS / "inner.safetensors"))
  with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors: not a regular file"):
    convert.read_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# LoRA files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
  """(a tiny WanDiT without LoRA, one with rank-4 LoRA params): the delta is merged or loaded."""
  return tuple(WanDiT(WanDiTConfig.preset("tiny", lora_rank=r), rngs=nnx.Rngs(0)) for r in (0, 4))


def peft(model, rank=4, suffix=".default.weight", seed=0) -> dict[str, np.ndarray]:
  """A DiffSynth-named LoRA for every target of `model`: lora_A (r, in), lora_B (out, r)."""
  rng = np.random.default_rng(seed)
  out = {}
  for ours, (_, original) in WAN_BLOCK_MODULES.items():
    module = model.blocks
    for part in ours.split("."):
      module = getattr(module, part)
    layers, d_in, d_out = module.kernel[...].shape
    for i in range(layers):
      out[f"blocks.{i}.{original}.lora_A{suffix}"] = rng.standard_normal((rank, d_in)).astype(np.float32)
      out[f"blocks.{i}.{original}.lora_B{suffix}"] = rng.standard_normal((d_out, rank)).astype(np.float32)
  return out


def load_refused(model, sd, tmp_path, message):
  """Loading `sd` raises one ValueError matching `message`, and leaves every parameter of `model` as it was."""
  path = write_safetensors(tmp_path / "lora.safetensors", {k: np.asarray(v) for k, v in sd.items()})
  before = nnx.state(model, nnx.Param).to_pure_dict()
  with pytest.raises(ValueError, match=rf"(?s)lora.safetensors: .*{message}"):
    convert.load_lora(path, model)
  after = nnx.state(model, nnx.Param).to_pure_dict()
  for (key, a), (_, b) in zip(nnx.to_flat_state(nnx.State(before)), nnx.to_flat_state(nnx.State(after))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))


@pytest.mark.parametrize("with_lora", [False, True])
def test_lora_ranks_are_checked_before_any_update(models, tmp_path, with_lora):
  model = models[with_lora]
  sd = peft(model)
  sd["blocks.1.ffn.2.lora_B.default.weight"] = np.ones((32, 3), np.float32)
  load_refused(model, sd, tmp_path, r"ffn_out: ranks of \(lora_A, lora_B\) differ or are 0, by layer: \{1: \(4, 3\)\}")


def test_rank_0_lora_with_an_alpha_is_refused(models, tmp_path):
  sd = {k: v[:0] if "lora_A" in k else v[:, :0] for k, v in peft(models[0], suffix=".weight").items()}
  sd.update({k.replace("lora_A.weight", "alpha"): np.float32(4.0) for k in list(sd) if "lora_A" in k})
  load_refused(
    models[0],
    sd,
    tmp_path,
    r"ffn_in: ranks of \(lora_A, lora_B\) differ or are 0, by layer: \{0: \(0, 0\), 1: \(0, 0\)\}",
  )


@pytest.mark.parametrize(
  "bad, message",
  [
    (np.full((4, 32), np.nan, np.float32), r"q.lora_A.default.weight: holds NaN or inf values"),
    (np.ones((4, 32), np.int8), r"q.lora_A.default.weight: a LoRA factor must be a 2-D float tensor, got int8"),
    (np.ones((4, 32), np.bool_), r"q.lora_A.default.weight: a LoRA factor must be a 2-D float tensor, got bool"),
    (np.ones((4, 32, 1), np.float32), r"q.lora_A.default.weight: .* got float32 of shape \(4, 32, 1\)"),
  ],
)
def test_non_finite_and_integer_loras_are_refused(models, tmp_path, bad, message):
  sd = {**peft(models[1]), "blocks.0.self_attn.q.lora_A.default.weight": bad}
  load_refused(models[1], sd, tmp_path, f"blocks.0.self_attn.{message}")


def test_a_lora_factor_given_by_two_keys_is_refused(models, tmp_path):
  sd = peft(models[1])
  sd["blocks.0.self_attn.q.lora_B.weight"] = np.zeros_like(sd["blocks.0.self_attn.q.lora_B.default.weight"])
  load_refused(
    models[1],
    sd,
    tmp_path,
    r"'blocks.0.self_attn.q.lora_B.default.weight' and 'blocks.0.self_attn.q.lora_B.weight' are the same LoRA tensor",
  )
