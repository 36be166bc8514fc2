"""Device mesh, logical axis names and the rules that map one onto the other.

Glossary of logical axes (every parameter and block-boundary activation is named with these):
  batch        examples in a global batch
  frames       latent or video frames
  tokens       video tokens after patching (F' * H' * W')
  embed        the model width
  heads        attention heads (also a fused heads * head_dim projection width)
  head_dim     width of one head
  mlp          FFN hidden width
  text_tokens  text sequence positions
  text_embed   text encoder width
  layers       the stacked-layer axis of scanned blocks
  vocab        token vocabulary
Mesh axes: data (pure data parallel), fsdp (data parallel with sharded parameters),
tensor (Megatron-style heads / mlp split), context (sequence split, Ulysses attention).

Multislice (several TPU slices joined by the data-centre network, DCN): the config's `mesh` block
gives the per-slice (ICI) sizes of the four axes, and optional `dcn_data` / `dcn_fsdp` (default 1)
how many slices each of data and fsdp spans. The global axis is ICI x DCN, with the slice as the outer
factor, so the axis names (and every sharding rule) stay the same. When neither key is set and the
devices come from several slices, the slices go on `data` (then `fsdp`): gradients cross the DCN once
per step, weights never. See docs/multislice.md.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")
DCN_AXES = ("data", "fsdp")  # the axes that may span slices; config keys dcn_data, dcn_fsdp
MESH_KEYS = MESH_AXES + tuple(f"dcn_{a}" for a in DCN_AXES)


class MeshShape(dict):
  """Global axis sizes {data, fsdp, tensor, context} (the Mesh's shape), and in `.dcn` the factor of
  each axis that spans slices ({"data": 2, "fsdp": 1}); the per-slice (ICI) size is the quotient."""

  def __init__(self, sizes: Mapping[str, int], dcn: Mapping[str, int] | None = None):
    super().__init__((a, int(sizes[a])) for a in MESH_AXES)
    self.dcn = {a: int((dcn or {}).get(a, 1)) for a in DCN_AXES}

  @property
  def num_slices(self) -> int:
    return math.prod(self.dcn.values())

  @property
  def ici(self) -> dict[str, int]:
    return {a: self[a] // self.dcn.get(a, 1) for a in MESH_AXES}

  def __repr__(self) -> str:
    dcn = {a: n for a, n in self.dcn.items() if n > 1}
    return super().__repr__() + (f" (across slices: {dcn})" if dcn else "")


# Logical axis -> mesh axes. One short table; the config may override entries.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("tokens", "context"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("head_dim", None),
  ("frames", None),
  ("text_tokens", None),
  ("text_embed", None),
  ("layers", None),
)


def _fill(sizes: dict[str, int], num_devices: int, what: str) -> dict[str, int]:
  """Fills the one axis set to -1 so that the product of `sizes` equals `num_devices`."""
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {fill}")
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{a}={s}: axis sizes must be positive or -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
        f"mesh.{fill[0]}=-1 cannot fill {num_devices} {what}: the other axes "
        f"multiply to {known}, which does not divide {num_devices}"
      )
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh: {sizes} multiplies to {math.prod(sizes.values())}, but there are {num_devices} {what}")
  return sizes


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int, num_slices: int | None = None) -> MeshShape:
  """The global mesh shape of a config's `mesh` block over `num_devices` in `num_slices` slices.

  data/fsdp/tensor/context are per-slice sizes (one may be -1: filled from the slice's devices);
  dcn_data/dcn_fsdp (default 1, one may be -1 when `num_slices` is given) count the slices each spans.
  `num_slices` None: the dcn keys' product. Given and larger than 1 with no dcn key set: the slices go
  on data. Raises ValueError naming the offending key when the shape cannot fit the devices.
  """
  unknown = set(shape) - set(MESH_KEYS)
  if unknown:
    raise ValueError(f"mesh: unknown axis {sorted(unknown)}; expected a subset of {MESH_KEYS}")
  dcn = {a: int(shape.get(f"dcn_{a}", 1)) for a in DCN_AXES}
  if num_slices is None:
    if -1 in dcn.values():
      raise ValueError("mesh.dcn_*=-1 needs the number of slices (e.g. aot --num_slices)")
    num_slices = math.prod(dcn.values())
  elif num_slices < 1:
    raise ValueError(f"num_slices={num_slices}: expected a positive count of slices")
  elif num_slices > 1 and not any(f"dcn_{a}" in shape for a in DCN_AXES):
    dcn["data"] = num_slices
  dcn = _fill({f"dcn_{a}": n for a, n in dcn.items()}, num_slices, "slices")
  if num_devices % num_slices:
    raise ValueError(f"mesh: {num_devices} devices do not split into {num_slices} equal slices")
  ici = _fill(
    {a: int(shape.get(a, 1)) for a in MESH_AXES},
    num_devices // num_slices,
    "devices" + (" per slice" if num_slices > 1 else ""),
  )
  dcn = {a: dcn[f"dcn_{a}"] for a in DCN_AXES}
  return MeshShape({a: ici[a] * dcn.get(a, 1) for a in MESH_AXES}, dcn)


def split_over_slices(sizes: Mapping[str, int], num_slices: int) -> MeshShape:
  """A global shape with no slice split yet, spread over `num_slices`: data takes what it can
  (the largest common factor), fsdp the rest. ValueError when the two cannot hold the slices."""
  sizes = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
  dcn_data = math.gcd(sizes["data"], num_slices)
  dcn_fsdp = num_slices // dcn_data
  if sizes["fsdp"] % dcn_fsdp:
    raise ValueError(
      f"mesh {sizes}: {num_slices} slices need mesh.data x mesh.fsdp to split over them "
      f"(data {sizes['data']} takes {dcn_data}, fsdp {sizes['fsdp']} cannot take {dcn_fsdp}); "
      "set mesh.dcn_data / mesh.dcn_fsdp"
    )
  return MeshShape(sizes, {"data": dcn_data, "fsdp": dcn_fsdp})


def slice_count(devices: Sequence[jax.Device]) -> int:
  """How many slices the devices come from (`slice_index`, set on multislice TPU; else 1)."""
  return len({getattr(d, "slice_index", 0) for d in devices}) or 1


def device_array(sizes: MeshShape, devices: Sequence[jax.Device]) -> np.ndarray:
  """Devices laid out as the (data, fsdp, tensor, context) mesh; the slice is each DCN axis's outer factor.

  Real multislice devices (several `slice_index` values): mesh_utils.create_hybrid_device_mesh (ICI mesh
  within a slice, DCN mesh across). Simulated slices (CPU, compile-only devices without slice_index):
  slice s is devices[s * n : (s + 1) * n], reshaped the same way.
  """
  dims = tuple(sizes[a] for a in MESH_AXES)
  n = sizes.num_slices if isinstance(sizes, MeshShape) else 1
  real = slice_count(devices)
  if real > 1 and real != n:
    raise ValueError(
      f"mesh {dict(sizes)}: the devices come from {real} slices, but mesh.dcn_data x mesh.dcn_fsdp = {n}"
    )
  if n > 1:
    ici = sizes.ici
    if real > 1:
      from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

      try:
        return mesh_utils.create_hybrid_device_mesh(
          [ici[a] for a in MESH_AXES], [sizes.dcn.get(a, 1) for a in MESH_AXES], devices
        )
      except (ValueError, NotImplementedError, AssertionError):  # a shape the ICI mapper cannot place
        devices = sorted(devices, key=lambda d: (d.slice_index, d.id))
    # (dcn_data, dcn_fsdp, ici_data, ici_fsdp, tensor, context) -> (data, fsdp, tensor, context)
    arr = np.asarray(devices).reshape(sizes.dcn["data"], sizes.dcn["fsdp"], *(ici[a] for a in MESH_AXES))
    return arr.transpose(0, 2, 1, 3, 4, 5).reshape(dims)
  if devices and devices[0].platform in ("cpu",) or len(devices) == 1:
    return np.asarray(devices).reshape(dims)
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

  return mesh_utils.create_device_mesh(dims, devices)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor, context) mesh with automatic axes over `devices` (default: all).

  `shape`: a resolved MeshShape (a plans.Plan's mesh_shape) or a config's `mesh` block. Devices from several
  slices with a shape that does not say how to span them: the slices go on data, then fsdp.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = shape if isinstance(shape, MeshShape) else resolve_mesh_shape(shape, len(devices))
  real = slice_count(devices)
  if real > 1 and sizes.num_slices == 1:
    sizes = split_over_slices(sizes, real)
  return Mesh(device_array(sizes, devices), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_rules(overrides: Mapping[str, object] | None = None):
  """The rules table with config overrides applied (values: mesh axis, tuple of axes or None)."""
  rules = dict(DEFAULT_RULES)
  for k, v in (overrides or {}).items():
    if k not in rules:
      raise ValueError(f"sharding.rules: unknown logical axis {k!r}; known: {sorted(rules)}")
    rules[k] = tuple(v) if isinstance(v, (list, tuple)) else v
  return tuple(rules.items())


def logical_to_spec(axes: Sequence[str | None], rules=DEFAULT_RULES) -> P:
  """PartitionSpec for logical `axes`; a mesh axis is used at most once (later uses -> None)."""
  table, used, out = dict(rules), set(), []
  for a in axes:
    m = table.get(a) if a is not None else None
    ms = () if m is None else ((m,) if isinstance(m, str) else tuple(m))
    ms = tuple(x for x in ms if x not in used)
    used.update(ms)
    out.append(None if not ms else (ms[0] if len(ms) == 1 else ms))
  return P(*out)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules))


def constrain(x: jax.Array, axes: Sequence[str | None], rules=None) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules or DEFAULT_RULES))


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` for multi-process runs (a no-op for a single process).

  Triggers, from the environment:
    MEGASCALE_COORDINATOR_ADDRESS / TPU_WORKER_HOSTNAMES (GKE, XPK), SLURM_NTASKS: JAX finds the rest.
    MICROVERSE_DISTRIBUTED=1 (set by launch/ on multi-host TPU VMs): JAX reads the workers from the
      GCE metadata server, which plain `gcloud ... ssh` shells do not export.
    JAX_COORDINATOR_ADDRESS (host:port) with JAX_NUM_PROCESSES and JAX_PROCESS_ID: an explicit run,
      e.g. several CPU processes on one machine (launch/local.py --num_processes).
  """
  import os

  multihost = any(
    k in os.environ
    for k in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS")
  )
  multihost |= os.environ.get("MICROVERSE_DISTRIBUTED", "0") not in ("", "0")
  if not multihost or jax.distributed.is_initialized():
    return
  explicit = {}
  for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if os.environ.get(env):
      try:
        explicit[key] = int(os.environ[env])
      except ValueError:
        raise ValueError(f"{env}={os.environ[env]!r}: expected an integer") from None
  jax.distributed.initialize(**explicit)
