"""Multislice (DCN) meshes: 2 simulated slices on 8 CPU devices training exactly as one device does, and an
ahead-of-time compile for 2 TPU slices (the slice arithmetic and device layout: test_sharding.py)."""

import pytest


# ------------------------------------------------------------------------------ 2 slices train as 1 device
def test_fsdp_across_two_slices_matches_the_single_device_losses(check_meshes_match_one_device):
  out = check_meshes_match_one_device({"dcn_fsdp2_d2f2": dict(data=2, fsdp=2, dcn_fsdp=2)})  # FSDP across slices
  assert "across slices: {'fsdp': 2}" in out


@pytest.mark.heavy
def test_data_across_two_slices_matches_the_single_device_losses(check_meshes_match_one_device):
  """The heavy variant: 2 slices of 4 on the data axis, FSDP within a slice."""
  out = check_meshes_match_one_device({"dcn_data2_fsdp4": dict(data=1, fsdp=-1, dcn_data=2)})
  assert "across slices: {'data': 2}" in out


# ------------------------------------------------------------------------------ AOT for 2 TPU slices
def test_train_step_compiles_for_two_v5p_slices():
  from microverse_jax import aot
  from microverse_jax.configs import microsim_tiny

  c = microsim_tiny.get_config("test")
  c.data.batch_size = 8
  _, info = aot.compile_train_step(c, aot.parse_topology("v5p-8"), num_slices=2)
  assert info["num_slices"] == 2 and info["chips"] == 8 and info["fits"]
  assert info["mesh"] == dict(data=8, fsdp=1, tensor=1, context=1) and info["dcn"] == dict(data=2, fsdp=1)
  # dcn_data=2: the gradients' all-reduce crosses the DCN once: 2 (S - 1) / S x G = G per slice.
  assert info["gradient_bytes"] > 0 and info["dcn_bytes_per_slice"] == info["gradient_bytes"]
  assert info["compiled_flops_per_device"] > 0
  report = aot.format_report(info)
  assert "x 2 slices" in report and "DCN per step" in report
