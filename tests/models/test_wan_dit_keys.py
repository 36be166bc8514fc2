"""The DiT's PyTorch key table (models/wan_dit_keys.py): export then import gives back every parameter bit for
bit, in both namings; the table is the one convert, export and the LoRA files read."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from microverse_jax import convert, export
from microverse_jax.models import lora, wan_dit_keys
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

CONFIGS = {
  "tiny": {},
  "no_cross_attn_norm": {"cross_attn_norm": False},
  "ti2v_shapes": {"in_channels": 48, "out_channels": 48, "num_heads": 3, "ffn_dim": 224},  # Wan2.2 TI2V-5B's
  "patch_2x2x2": {"patch_size": (2, 2, 2), "num_layers": 3},
}


def _model(**overrides) -> WanDiT:
  model = WanDiT(WanDiTConfig.preset("tiny", **overrides), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
  nnx.update(model, jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape), state))
  return model


def _params(model) -> dict[str, np.ndarray]:
  return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _original_names(sd: dict) -> dict:
  """Diffusers keys renamed to the original Wan / DiffSynth ones through the table's own columns."""
  rows = [(d, o) for _, d, o, _ in wan_dit_keys.TOP_KEYS]
  rows += [(f"blocks.{i}.{d}", f"blocks.{i}.{o}") for i in range(50) for _, d, o, _ in wan_dit_keys.BLOCK_KEYS]
  rename = dict(rows)
  out = {}
  for key, value in sd.items():
    module, _, tensor = key.rpartition(".")
    out[f"{rename[module]}.{tensor}" if module in rename else rename[key]] = value
  return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_then_import_gives_every_parameter_back_bit_for_bit(name):
  model = _model(**CONFIGS[name])
  params, cfg = _params(model), model.cfg
  sd = export.diffusers_state_dict(model)
  assert wan_dit_keys.torch_layout(sd) == "diffusers" and wan_dit_keys.layer_count(sd) == cfg.num_layers
  for naming, tensors in (("diffusers", sd), ("original", _original_names(sd))):
    back = wan_dit_keys.wan_dit_arrays(tensors, cfg.num_layers)
    assert sorted(back) == sorted(params), naming
    for key, value in params.items():
      assert back[key].dtype == value.dtype and np.array_equal(back[key], value), (naming, key)
    prefixed = {"pipe.dit." + k: v for k, v in tensors.items()}  # a config-less DiffSynth file
    inferred = wan_dit_keys.wan_dit_config_from_state_dict(prefixed, head_dim=16)
    assert inferred == dataclasses.replace(cfg, rope_max_seq_len=1024), naming


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_diffusers_config_reads_back_as_the_same_architecture(name):
  cfg = WanDiTConfig.preset("tiny", **CONFIGS[name])
  written = wan_dit_keys.diffusers_config(cfg)
  assert list(written)[:3] == ["_class_name", "_diffusers_version", "patch_size"]
  assert written["image_dim"] is None and written["num_attention_heads"] == cfg.num_heads
  assert wan_dit_keys.wan_dit_config_from_json(written) == cfg


def test_the_table_covers_every_parameter_of_the_model_once():
  model = _model()
  modules = {k.removeprefix("blocks.").rsplit(".", 1)[0] for k in _params(model)}  # modulation: no module
  rows = [row[0] for row in wan_dit_keys.TOP_KEYS + wan_dit_keys.BLOCK_KEYS]
  assert len(rows) == len(set(rows)) and set(rows) == modules
  for column in (1, 2):
    for table in (wan_dit_keys.TOP_KEYS, wan_dit_keys.BLOCK_KEYS):
      names = [row[column] for row in table]
      assert len(names) == len(set(names)), column


def test_lora_files_name_the_block_linears_as_the_table_does():
  linear = {ours: (d, o) for ours, d, o, kind in wan_dit_keys.BLOCK_KEYS if kind == "linear"}
  assert lora.WAN_BLOCK_MODULES == linear
  assert set(WanDiTConfig().lora_targets) == {name.rsplit(".", 1)[-1] for name in linear}


def test_a_parameter_the_table_lacks_is_named_on_export():
  model = _model()
  params = {**_params(model), "blocks.extra.kernel": np.zeros((2, 3, 3), np.float32)}
  with pytest.raises(ValueError, match=r"no diffusers name: \['blocks.extra.kernel'\]"):
    wan_dit_keys.wan_dit_state_dict(params, model.cfg)


def test_an_original_checkpoint_missing_a_tensor_names_it_in_its_own_naming(tmp_path):
  from safetensors.numpy import save_file

  sd = _original_names(export.diffusers_state_dict(_model()))
  del sd["blocks.1.ffn.2.bias"]
  save_file(sd, str(tmp_path / "dit.safetensors"))
  with pytest.raises(ValueError, match=r"missing key 'blocks\.1\.ffn\.2\.bias'"):
    convert.pytorch_arrays(str(tmp_path / "dit.safetensors"), "dit")
