"""Multislice (DCN) meshes: the slice arithmetic, the device layout, 2 simulated slices on 8 CPU
devices training exactly as one device does, and an ahead-of-time compile for 2 TPU slices."""

import numpy as np
import pytest

from microverse_jax import sharding

# ------------------------------------------------------------------------------ slice arithmetic


def test_existing_mesh_blocks_resolve_as_before():
  assert sharding.resolve_mesh_shape(dict(data=-1, fsdp=1, tensor=1, context=1), 8) == dict(
    data=8, fsdp=1, tensor=1, context=1
  )
  shape = sharding.resolve_mesh_shape(dict(data=2, fsdp=-1), 8)
  assert dict(shape) == dict(data=2, fsdp=4, tensor=1, context=1) and shape.num_slices == 1


@pytest.mark.parametrize(
  "mesh, num_slices, sizes, dcn",
  [
    (dict(data=1, fsdp=-1, dcn_data=2), None, (2, 4, 1, 1), dict(data=2, fsdp=1)),
    (dict(data=2, fsdp=-1, dcn_fsdp=2), None, (2, 4, 1, 1), dict(data=1, fsdp=2)),
    (dict(data=1, fsdp=-1), 2, (2, 4, 1, 1), dict(data=2, fsdp=1)),  # default: slices on data
    (dict(data=-1, tensor=2), 4, (4, 1, 2, 1), dict(data=4, fsdp=1)),
    (dict(fsdp=-1, dcn_data=2, dcn_fsdp=-1), 4, (2, 4, 1, 1), dict(data=2, fsdp=2)),
  ],
)
def test_the_global_axis_is_the_per_slice_axis_times_its_slices(mesh, num_slices, sizes, dcn):
  shape = sharding.resolve_mesh_shape(mesh, 8, num_slices)
  assert tuple(shape[a] for a in sharding.MESH_AXES) == sizes and shape.dcn == dcn
  assert shape.num_slices == 8 // (8 // shape.num_slices)
  assert all(shape.ici[a] * shape.dcn.get(a, 1) == shape[a] for a in sharding.MESH_AXES)


@pytest.mark.parametrize(
  "mesh, num_slices, message",
  [
    (dict(data=3, dcn_data=2), None, "per slice"),
    (dict(dcn_data=3), None, "3 equal slices"),
    (dict(dcn_data=2), 4, "slices"),
    (dict(dcn_data=-1), None, "needs the number of slices"),
    (dict(dcn_tensor=2), None, "unknown axis"),
  ],
)
def test_bad_slice_arithmetic_names_the_key(mesh, num_slices, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_mesh_shape(mesh, 8, num_slices)


def test_split_over_slices_puts_slices_on_data_then_fsdp():
  assert sharding.split_over_slices(dict(data=4, fsdp=2), 2).dcn == dict(data=2, fsdp=1)
  assert sharding.split_over_slices(dict(data=1, fsdp=8), 2).dcn == dict(data=1, fsdp=2)
  assert sharding.split_over_slices(dict(data=2, fsdp=4), 4).dcn == dict(data=2, fsdp=2)
  with pytest.raises(ValueError, match="dcn_data"):
    sharding.split_over_slices(dict(data=1, fsdp=1, tensor=8), 2)


class FakeDevice:
  def __init__(self, i, slice_index):
    self.id, self.slice_index, self.platform = i, slice_index, "tpu"

  def __repr__(self):
    return f"D{self.id}/s{self.slice_index}"


def test_simulated_slices_are_contiguous_devices_and_the_outer_factor_of_their_axis():
  devices = [FakeDevice(i, 0) for i in range(8)]  # no real slice split: simulated by position
  for mesh, axis in ((dict(data=1, fsdp=2, tensor=2, dcn_data=2), 0), (dict(data=2, fsdp=-1, dcn_fsdp=2), 1)):
    arr = sharding.device_array(sharding.resolve_mesh_shape(mesh, 8), devices)
    ids = np.vectorize(lambda d: d.id)(arr)
    first, second = np.split(ids, 2, axis=axis)  # the outer half of the DCN axis is the second slice
    assert set(first.ravel()) == {0, 1, 2, 3} and set(second.ravel()) == {4, 5, 6, 7}


def test_devices_of_several_slices_must_match_the_config():
  devices = [FakeDevice(i, i // 2) for i in range(8)]  # 4 real slices of 2
  with pytest.raises(ValueError, match="4 slices"):
    sharding.device_array(sharding.resolve_mesh_shape(dict(fsdp=-1, dcn_data=2), 8), devices)


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
