"""Every config loads, builds a model config, reads every key it sets; sweeps expand; AOT compiles."""

import glob
import importlib
import itertools
import os
import re

import pytest

from microverse_jax import aot, plans
from microverse_jax.models.wan_dit import WanDiTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ARGS = {
  "microsim_tiny": ["", "test", "long", "long,test"],
  "wan2_1": [",".join(v) for v in itertools.product(("1.3b", "14b"), ("lora", "full"), ("480p", "720p"))]
  + ["14b,lora,runlocal", "1.3b,full,runlocal"],
  "wan2_2": ["ti2v_5b,lora", "ti2v_5b,full", "t2v_a14b,lora,expert=high", "t2v_a14b,full,720p,expert=low"]
  + ["ti2v_5b,lora,runlocal", "t2v_a14b,full,expert=high,runlocal"],
}


def test_every_config_file_is_covered():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))} - {"__init__"}
  assert files == set(CONFIG_ARGS) | {"base"}


def test_the_base_config_names_every_key_once_with_a_comment_and_recipes_only_override_it():
  from microverse_jax.configs import base

  keys = set(_leaf_keys(base.get_config()))
  for name, args in CONFIG_ARGS.items():
    for arg in args:
      c = importlib.import_module(f"microverse_jax.configs.{name}").get_config(arg)
      assert set(_leaf_keys(c)) == keys, (name, arg, set(_leaf_keys(c)) ^ keys)
  lines = open(os.path.join(REPO, "configs", "base.py")).read().splitlines()
  assigned = [line for line in lines if re.match(r"  c\.\w+(\.\w+)? = (?!ml_collections\.ConfigDict\(\)$)", line)]
  assert len(assigned) > 60 and [line for line in assigned if "#" not in line] == []
  assert set(base.get_config().model) == set(WanDiTConfig.__dataclass_fields__)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in CONFIG_ARGS.items() for a in args])
def test_config_loads_and_is_consistent(name, arg):
  c = importlib.import_module(f"microverse_jax.configs.{name}").get_config(arg)
  cfg = plans.dit_config(c)
  assert isinstance(cfg, WanDiTConfig)
  assert plans.latent_shape(c, plans.vae_config(c))[-1] == cfg.in_channels
  assert c.model.text_dim == (4096 if c.text.preset == "umt5-xxl" else c.model.text_dim)


def test_wan_presets_match_the_paper():
  from microverse_jax.configs import wan2_1

  small, big = wan2_1.get_config("1.3b,lora"), wan2_1.get_config("14b,full")
  assert (small.model.num_heads * small.model.head_dim, small.model.num_layers, small.model.lora_rank) == (1536, 30, 32)
  assert (big.model.num_heads * big.model.head_dim, big.model.ffn_dim, big.model.lora_rank) == (5120, 13824, 0)
  assert small.optim.lr == 1e-4 and big.optim.lr == 1e-5 and small.diffusion.shift == 5.0
  with pytest.raises(ValueError, match="unknown variants"):
    wan2_1.get_config("1.3b,lorra")


def test_the_tiny_long_variant_is_the_physics_curve_run():
  from microverse_jax.configs import microsim_tiny

  short, long = microsim_tiny.get_config(""), microsim_tiny.get_config("long")
  assert (long.train.num_steps, short.train.num_steps, long.evals.physics.every) == (19200, 2400, 2400)
  assert (long.diffusion.weighting, long.optim.ema_decay, short.diffusion.weighting) == ("snr+1", 0.999, "wan")
  with pytest.raises(ValueError, match="unknown variants"):
    microsim_tiny.get_config("lnog")


def _leaf_keys(c, prefix=""):
  for key, value in c.items():
    if hasattr(value, "items"):
      yield from _leaf_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_no_dead_config_keys():
  """Every key a config sets is read: model.* are WanDiTConfig fields; others appear in the code."""
  sources = "\n".join(
    open(p).read() for p in glob.glob(os.path.join(REPO, "microverse_jax", "**", "*.py"), recursive=True)
  )
  fields = set(WanDiTConfig.__dataclass_fields__)
  for name, args in {**CONFIG_ARGS, "base": [""]}.items():
    for arg in args:
      module = importlib.import_module(f"microverse_jax.configs.{name}")
      c = module.get_config(arg) if arg else module.get_config()
      for key in _leaf_keys(c):
        section, _, leaf = key.rpartition(".")
        if section == "model":
          assert leaf in fields, key
        elif section != "mesh":  # mesh.* is read as a whole (sharding.resolve_mesh_shape)
          assert re.search(rf"\.{re.escape(leaf)}\b", sources), f"{name}:{arg} sets {key}, never read"


def test_sweep_expands_to_distinct_valid_overrides():
  from microverse_jax.configs import wan2_1

  runs = wan2_1.sweep("1.3b,lora")
  assert len(runs) == 9 and len({tuple(sorted(r.items())) for r in runs}) == 9
  c = wan2_1.get_config("1.3b,lora")
  for run in runs:
    for key in run:
      section, leaf = key.split(".")
      assert leaf in c[section], key
  assert all(set(r) == {"optim.lr"} for r in wan2_1.sweep("1.3b,full"))


def test_tiny_training_step_compiles_ahead_of_time_for_v5p():
  from microverse_jax.configs import microsim_tiny

  topology = aot.parse_topology("v5p-8")
  assert (topology.name, topology.chips) == ("v5p:2x2x1", 4)
  assert aot.parse_topology("v5e-16").name == "v5e:4x4" and aot.parse_topology("v6e-8").name == "v6e:2x4"
  with pytest.raises(ValueError, match="v5p slices"):
    aot.parse_topology("v5p-6")
  _, info = aot.compile_train_step(microsim_tiny.get_config("test"), topology)
  assert info["fits"] and info["temp_bytes"] > 0 and info["mesh"]["data"] == 4
  assert "per-device total" in aot.format_report(info)
