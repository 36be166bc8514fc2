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
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")

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


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills the one axis set to -1 so that the product equals `num_devices`.

  Raises ValueError naming the offending key when the shape cannot fit the devices.
  """
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axis {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {fill}")
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{a}={s}: axis sizes must be positive or -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh.{fill[0]}=-1 cannot fill {num_devices} devices: the other axes "
                       f"multiply to {known}, which does not divide {num_devices}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh: {sizes} multiplies to {math.prod(sizes.values())}, "
                     f"but there are {num_devices} devices")
  return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor, context) mesh with automatic axes over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  dims = tuple(sizes[a] for a in MESH_AXES)
  if devices and devices[0].platform in ("cpu",) or len(devices) == 1:
    device_array = np.asarray(devices).reshape(dims)
  else:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(dims, devices)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


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
  multihost = any(k in os.environ for k in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                            "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"))
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
