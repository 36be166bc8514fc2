"""Ahead-of-time compiles of the frozen encoders for a TPU topology (libtpu, no TPU)."""

from microverse_jax import aot
from microverse_jax.configs import wan2_1


def test_the_encoders_program_compiles_sharded_for_v5p():
  c = wan2_1.get_config("14b,lora,runlocal")  # the 14B LoRA recipe's structure at CPU sizes
  c.data.batch_size = 4
  _, info = aot.compile_encoders(c, aot.parse_topology("v5p-8"))
  assert info["fits"] and info["mesh"]["data"] == 4 and info["temp_bytes"] > 0
  assert "DOES NOT FIT" not in aot.format_report(info)
