"""Ahead-of-time compiles for a TPU topology (libtpu, no TPU): encoders on v5p, the training step on v7x and v4."""

import math

from microverse_jax import aot
from microverse_jax.configs import wan2_1


def test_the_encoders_program_compiles_sharded_for_v5p():
  c = wan2_1.get_config("14b,lora,runlocal")  # the 14B LoRA recipe's structure at CPU sizes
  c.data.batch_size = 4
  _, info = aot.compile_encoders(c, aot.parse_topology("v5p-8"))
  assert info["fits"] and info["mesh"]["data"] == 4 and info["temp_bytes"] > 0
  assert "DOES NOT FIT" not in aot.format_report(info)


def test_the_training_step_compiles_for_v7x_and_v4_with_their_devices_per_chip():
  """TPU7x: two JAX devices a chip, half its HBM each; v4: one megacore device a chip, as on a v4 VM."""
  from microverse_jax.configs import microsim_tiny

  for spec, devices, hbm_gib in (("v7x-8", 8, 96), ("v4-8", 4, 32)):
    c = microsim_tiny.get_config("test")
    c.data.batch_size = 8
    _, info = aot.compile_train_step(c, aot.parse_topology(spec))
    assert (math.prod(info["mesh"].values()), info["hbm_bytes"], info["fits"]) == (devices, hbm_gib * 2**30, True)


def test_every_remat_policy_compiles_for_v5p_and_offload_uses_host_memory():
  """The menu (models/wan_dit.py, REMAT_POLICIES) on TPU: only offload_block_outputs keeps bytes in host
  memory (pinned_host), and no policy keeps more temporaries than "none"."""
  from microverse_jax.configs import wan2_1
  from microverse_jax.models.wan_dit import REMAT_POLICIES

  temps = {}
  for policy in REMAT_POLICIES:
    c = wan2_1.get_config("1.3b,lora,runlocal")
    c.data.update(source="latents", batch_size=4)  # the step alone (the cache path), as at scale
    c.model.remat_policy = policy
    _, info = aot.compile_train_step(c, aot.parse_topology("v5p-8"))
    assert info["fits"] and (info["host_bytes"] > 0) == (policy == "offload_block_outputs"), (policy, info)
    temps[policy] = info["temp_bytes"]
  assert max(temps.values()) == temps["none"], temps
