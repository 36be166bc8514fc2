"""sharding: the mesh shape of a config's `mesh` block (per slice and across slices), the device layout, the
logical axis rules and the specs they give, and a mesh over 8 simulated devices sharding a batch."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from microverse_jax import sharding

# ------------------------------------------------------------------------------ mesh shapes


def test_existing_mesh_blocks_resolve_as_before():
  assert sharding.resolve_mesh_shape(dict(data=-1, fsdp=1, tensor=1, context=1), 8) == dict(
    data=8, fsdp=1, tensor=1, context=1
  )
  shape = sharding.resolve_mesh_shape(dict(data=2, fsdp=-1), 8)
  assert dict(shape) == dict(data=2, fsdp=4, tensor=1, context=1) and shape.num_slices == 1


@pytest.mark.parametrize(
  "mesh, message",
  [
    (dict(data=-1, fsdp=-1), r"mesh: only one axis may be -1, got \['data', 'fsdp'\]"),
    (dict(data=2, fsdp=0), r"mesh.fsdp=0: axis sizes must be positive or -1"),
    (dict(tensor=-2), r"mesh.tensor=-2: axis sizes must be positive or -1"),
    (dict(data=-1, tensor=3), r"mesh.data=-1 cannot fill 8 devices: the other axes multiply to 3"),
    (
      dict(data=2, fsdp=2),
      r"mesh: \{'data': 2, 'fsdp': 2, 'tensor': 1, 'context': 1\} multiplies to 4, but there are 8",
    ),
    (dict(data=8, model=1), r"mesh: unknown axis \['model'\]"),
  ],
)
def test_a_mesh_that_cannot_fit_the_devices_names_the_key(mesh, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_mesh_shape(mesh, 8)


def test_mesh_shape_knows_its_slices():
  shape = sharding.MeshShape(dict(data=4, fsdp=2, tensor=1, context=1), dict(data=2))
  assert shape.num_slices == 2 and shape.ici == dict(data=2, fsdp=2, tensor=1, context=1)
  assert repr(shape).endswith(" (across slices: {'data': 2})")
  assert "across" not in repr(sharding.MeshShape(dict(data=4, fsdp=2, tensor=1, context=1)))
  with pytest.raises(ValueError, match="num_slices=0: expected a positive count"):
    sharding.resolve_mesh_shape(dict(data=-1), 8, 0)


# ------------------------------------------------------------------------------ slice arithmetic
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
  def __init__(self, i, slice_index, platform="tpu"):
    self.id, self.slice_index, self.platform = i, slice_index, platform

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


def test_cpu_devices_of_one_slice_are_laid_out_in_order():
  devices = [FakeDevice(i, 0, platform="cpu") for i in range(8)]
  assert sharding.slice_count(devices) == 1 and sharding.slice_count([FakeDevice(0, 0), FakeDevice(1, 1)]) == 2
  arr = sharding.device_array(sharding.resolve_mesh_shape(dict(data=2, fsdp=2, tensor=2), 8), devices)
  np.testing.assert_array_equal(np.vectorize(lambda d: d.id)(arr), np.arange(8).reshape(2, 2, 2, 1))


# ------------------------------------------------------------------------------ logical rules
def test_logical_rules_take_overrides_and_refuse_an_unknown_axis():
  rules = dict(sharding.logical_rules({"embed": None, "heads": ["tensor", "context"]}))
  assert rules["embed"] is None and rules["heads"] == ("tensor", "context") and rules["batch"] == ("data", "fsdp")
  assert dict(sharding.logical_rules()) == dict(sharding.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"sharding.rules: unknown logical axis 'channels'; known: \["):
    sharding.logical_rules({"channels": "tensor"})


def test_logical_to_spec_uses_each_mesh_axis_once():
  assert sharding.logical_to_spec(("batch", "tokens", "heads", "head_dim")) == P(
    ("data", "fsdp"), "context", "tensor", None
  )
  assert sharding.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  # batch would take data and fsdp; embed came first and holds fsdp, so batch gets data alone
  assert sharding.logical_to_spec(("embed", "batch")) == P("fsdp", "data")
  assert sharding.logical_to_spec((None, "frames", "not_an_axis")) == P(None, None, None)
  assert sharding.logical_to_spec(("embed",), (("embed", ("fsdp", "tensor")),)) == P(("fsdp", "tensor"))


def test_on_this_machines_one_device_the_mesh_has_four_axes_of_one():
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1))
  assert mesh.axis_names == sharding.MESH_AXES and dict(mesh.shape) == dict(data=1, fsdp=1, tensor=1, context=1)
  spec = sharding.named_sharding(mesh, ("batch", "embed")).spec
  assert spec == P(("data", "fsdp"), None)
  x = jnp.ones((2, 3))
  assert sharding.constrain(x, ("batch", "embed")) is x  # outside a mesh: untouched


def test_distributed_init_is_a_no_op_for_one_process_and_names_a_bad_variable(monkeypatch):
  for key in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"):
    monkeypatch.delenv(key, raising=False)
  monkeypatch.delenv("MICROVERSE_DISTRIBUTED", raising=False)
  sharding.maybe_initialize_distributed()
  assert not jax.distributed.is_initialized()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two': expected an integer"):
    sharding.maybe_initialize_distributed()


# ------------------------------------------------------------------------------ 8 simulated devices
EIGHT_DEVICES = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from microverse_jax import sharding
mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2, context=1))
batch = jax.device_put(jnp.arange(8 * 6.0).reshape(8, 6), sharding.named_sharding(mesh, ("batch", "heads")))
with jax.set_mesh(mesh):
  out = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", None)))(batch)
print("RESULT" + json.dumps(dict(
  shape=dict(mesh.shape),
  ids=np.vectorize(lambda d: d.id)(mesh.devices).ravel().tolist(),
  batch_shard=list(batch.sharding.shard_shape(batch.shape)),
  out_as_batch=out.sharding.is_equivalent_to(sharding.named_sharding(mesh, ("batch", None)), 2),
  out_shard=list(out.sharding.shard_shape(out.shape)),
  equal=bool(np.array_equal(np.asarray(out), np.arange(8 * 6.0).reshape(8, 6) * 2)),
)))
"""


def test_a_batch_shards_over_data_and_fsdp_of_8_devices(run_on_cpu_devices):
  proc = run_on_cpu_devices(["-c", EIGHT_DEVICES], 8, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.split("RESULT")[-1])
  assert got["shape"] == dict(data=2, fsdp=2, tensor=2, context=1) and got["ids"] == list(range(8))
  assert got["batch_shard"] == [2, 3]  # rows over data x fsdp = 4, columns (heads) over tensor = 2
  assert got["out_shard"] == [2, 6] and got["out_as_batch"] and got["equal"]
