"""Ahead-of-time compile of the real training step for a TPU topology, on this (CPU) machine.

  python -m microverse_jax.aot --config=configs/wan2_1.py:1.3b,full --topology=v5p-8 [--config.key=value]
  python -m microverse_jax.aot --config=configs/wan2_1.py:14b,full --topology=v5p-64 --num_slices=2 [--dcn_axis=fsdp]

Needs libtpu (`pip install libtpu`; in the test extra). Prints per-device memory (arguments, temporaries,
total vs the device's HBM) and the step's FLOPs, proving a run fits before a slice is rented.
Topologies: the accelerator types of microverse_jax/tpu_specs.py (`v4-N`, `v5p-N`, `v7x-N`: N TensorCores =
2 x chips; `v5e-N`, `v6e-N`: N chips), or a raw libtpu name such as `v5p:2x2x1`. --num_slices=N compiles
for N such slices joined by the DCN (multislice): the config's mesh block is per slice, and the slices go
on --dcn_axis (data: the gradient all-reduce crosses the DCN once per step; fsdp: weights are gathered
across it too). The report adds an estimate of the bytes that cross the DCN per step (see dcn_traffic).
Which remat policy, mesh and batch fit a topology best: `python -m microverse_jax.fit` (built on this module).
"""

from __future__ import annotations

import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: no TPU is held

import dataclasses
import importlib.util
import math
import re

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import AxisType, Mesh
from ml_collections import config_flags

from microverse_jax import batches, cli, encoders, flops, plans, sharding, tpu_specs, train_state, train_step


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # libtpu topology name, e.g. "v5p:2x2x2"
  chips: int
  hbm_bytes: int  # per JAX device (a TPU7x chip is two devices)
  chip_config: str | None = None  # libtpu's chip config (v4: megacore, one device per chip as on a v4 VM)
  peak_flops: float = float("nan")  # bf16 FLOP/s per JAX device
  hbm_bandwidth: float = float("nan")  # HBM bytes/s per JAX device


def parse_topology(spec: str) -> Topology:
  """'v5p-8' / 'v7x-8' / 'v5e-16' (accelerator types: tpu_specs.slice_shape) or 'v5p:2x2x1' -> Topology."""
  if ":" in spec:
    name, _, grid = spec.partition(":")
    if not re.fullmatch(r"\d+(x\d+)+", grid):
      raise ValueError(f"--topology={spec!r}: a libtpu name is GENERATION:AxB or GENERATION:AxBxC")
    try:
      gen, chips = tpu_specs.generation(name), math.prod(int(x) for x in grid.split("x"))
    except ValueError as e:
      raise ValueError(f"--topology={spec!r}: {e}") from None
  else:
    try:
      gen, chips, grid = tpu_specs.slice_shape(spec)
    except ValueError as e:
      raise ValueError(f"--topology={e}; or a libtpu name such as v5p:2x2x1") from None
  per = gen.devices_per_chip
  return Topology(
    f"{gen.libtpu_name}:{grid}",
    chips,
    gen.hbm_bytes // per,
    gen.chip_config,
    gen.peak_flops / per,
    gen.hbm_bandwidth / per,
  )


def with_slices(c, num_slices: int, dcn_axis: str = "data"):
  """A copy of config `c` whose mesh spans `num_slices` slices on `dcn_axis` (data or fsdp); a config
  that already sets mesh.dcn_data / mesh.dcn_fsdp keeps them (checked against the count)."""
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: expected a positive count of slices")
  if dcn_axis not in sharding.DCN_AXES:
    raise ValueError(f"--dcn_axis={dcn_axis!r}: expected one of {sharding.DCN_AXES}")
  c = c.copy_and_resolve_references()
  mesh = c.mesh.to_dict()
  if not any(k.startswith("dcn_") for k in mesh) and num_slices > 1:
    with c.unlocked():
      c.mesh[f"dcn_{dcn_axis}"] = num_slices
  dcn = [int(v) for k, v in c.mesh.to_dict().items() if k.startswith("dcn_")]
  if -1 not in dcn and math.prod(dcn) != num_slices:
    raise ValueError(f"--num_slices={num_slices}, but the config's mesh.dcn_* multiply to {math.prod(dcn)}")
  return c


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  if importlib.util.find_spec("libtpu") is None:  # JAX's own error is a traceback naming no package
    raise ModuleNotFoundError("No module named 'libtpu' (compiling for a TPU topology needs it)", name="libtpu")
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  kwargs.update({"chip_config_name": topology.chip_config} if topology.chip_config else {})
  return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.name, **kwargs).devices)


def _tpu_mesh(c, topology: Topology, num_slices: int = 1):
  """(plans.Plan, Mesh over the topology's devices) for the config; num_slices > 1: the config's
  mesh (with its dcn_* keys) over that many copies of the slice, laid out as the trainer does."""
  devices = topology_devices(topology, num_slices)
  plan = plans.resolve(c, len(devices), num_slices)
  shape = plan.mesh_shape
  if num_slices > 1:
    mesh = sharding.make_mesh(shape, devices)  # create_hybrid_device_mesh: devices carry slice_index
  else:
    mesh = Mesh(
      np.asarray(devices).reshape([shape[a] for a in sharding.MESH_AXES]),
      sharding.MESH_AXES,
      axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES),
    )
  return plan, mesh


def dcn_traffic(params, shape) -> dict:
  """Estimated bytes that cross the DCN per optimizer step, per slice (sent = received), from the
  trainable parameters (`params`: arrays or ShapeDtypeStructs; gradients have their dtype), assuming
  hierarchical collectives (reduce within a slice over ICI, then across slices):
    dcn_data = S_d: all-reduce of the gradients over the slices, ring: 2 (S_d - 1) / S_d x G / S_f;
    dcn_fsdp = S_f: weights all-gathered across slices in the forward pass and again in the backward
      (remat), gradients reduce-scattered: (S_f - 1) / S_f x 3 G.
  With grad_accum > 1 the fsdp gathers repeat per micro-batch (not counted here)."""
  grad = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
  dcn = getattr(shape, "dcn", {"data": 1, "fsdp": 1})
  s_d, s_f = dcn["data"], dcn["fsdp"]
  per_slice = 2 * (s_d - 1) / s_d * grad / s_f + (s_f - 1) / s_f * 3 * grad
  return {
    "num_slices": s_d * s_f,
    "dcn": dict(dcn),
    "gradient_bytes": grad,
    "dcn_bytes_per_slice": per_slice,
    "dcn_bytes_per_device": per_slice / (math.prod(shape.values()) // (s_d * s_f)),
  }


def _report(compiled, topology: Topology, shape: dict, model_flops: float) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  return {
    "topology": topology.name,
    "chips": math.prod(shape.values()),
    "mesh": dict(shape),
    "num_slices": getattr(shape, "num_slices", 1),
    "argument_bytes": mem.argument_size_in_bytes,
    "output_bytes": mem.output_size_in_bytes,
    "temp_bytes": mem.temp_size_in_bytes,
    "alias_bytes": mem.alias_size_in_bytes,
    "host_bytes": mem.host_argument_size_in_bytes + mem.host_output_size_in_bytes + mem.host_temp_size_in_bytes,
    "total_bytes": total,
    "hbm_bytes": topology.hbm_bytes,
    "fits": total <= topology.hbm_bytes,
    "compiled_flops_per_device": float((cost or {}).get("flops", float("nan"))),
    "model_flops_per_step": model_flops,
  }


_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.-]+)\s.*\{\s*$")
_DCN_SEND = re.compile(r"=\s*\((.+?)\)\s+send\(.*_xla_host_transfer_handler_name=\"xla_megascale_runtime\"")
_DCN_KIND = re.compile(r"_xla_megascale_transfer_type=\"(\w+)\"")


def _array_bytes(text: str) -> int:
  """Bytes of the first array type in `text` (e.g. 'f32[2,8,128]{2,1,0:T(8,128)}, u32[]')."""
  m = _ARRAY.search(text)
  if not m:
    return 0
  dtype, dims = m.groups()
  size = {"pred": 1, "bf16": 2}.get(dtype) or max(1, int(re.sub(r"\D", "", dtype) or 8) // 8)
  return size * math.prod(int(d) for d in dims.split(",") if d)


def multiplicity(hlo: str) -> tuple[dict[str, list[str]], dict[str, int]]:
  """(computation -> its lines, computation -> times it runs per call of ENTRY): while bodies count
  their known_trip_count, or else the s32 constant their condition compares the counter with (a scan
  over layers: once per layer)."""
  comps: dict[str, list[str]] = {}
  entry = current = None
  for line in hlo.splitlines():
    m = _COMPUTATION.match(line)
    if m and "=" not in line.split("(")[0]:
      current = m.group(2)
      comps[current] = []
      entry = current if m.group(1) else entry
    elif current is not None:
      comps[current].append(line)
  calls: dict[str, list[tuple[str, int]]] = {c: [] for c in comps}
  for name, lines in comps.items():
    for line in lines:
      body = re.search(r"body=%?([\w.-]+)", line)
      trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      trips = int(trip.group(1)) if trip else 1
      cond = re.search(r"condition=%?([\w.-]+)", line)
      if body and not trip and cond and cond.group(1) in comps:  # the bound the loop counter is compared to
        bounds = [int(n) for l in comps[cond.group(1)] for n in re.findall(r"s32\[\]\S* constant\((\d+)\)", l)]
        trips = max(bounds, default=1)
      refs = re.findall(r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.-]+)", line)
      for group in re.findall(r"(?:branch_computations|calls)=\{([^}]*)\}", line):
        refs += [r.strip().lstrip("%") for r in group.split(",")]
      for callee in refs:
        if callee in comps:
          calls[name].append((callee, trips if body and body.group(1) == callee else 1))
  mult: dict[str, int] = {}

  def visit(name: str, m: int) -> None:
    mult[name] = mult.get(name, 0) + m
    for callee, k in calls.get(name, ()):
      visit(callee, m * k)

  if comps:
    visit(entry or next(iter(comps)), 1)
  return comps, mult


def hlo_dcn_transfers(hlo: str) -> dict[str, list[float]]:
  """What crosses the DCN in a compiled multislice TPU program, read from its HLO text.

  XLA lowers the cross-slice part of each collective to a `send` handled by the Megascale runtime
  (`_xla_host_transfer_handler_name="xla_megascale_runtime"`, `_xla_megascale_transfer_type=ALL_REDUCE`,
  ...). Returns {transfer type: [sends, bytes]} per device per step: each send's buffer, times the
  trip count of the while loops around it (a scanned layer's sends count once per layer)."""
  comps, mult = multiplicity(hlo)
  totals: dict[str, list[float]] = {}
  for name, lines in comps.items():
    for line in lines:
      m = _DCN_SEND.search(line)
      if not m or not mult.get(name):
        continue
      kind = _DCN_KIND.search(line)
      t = totals.setdefault(kind.group(1) if kind else "UNKNOWN", [0, 0.0])
      t[0] += mult[name]
      t[1] += mult[name] * _array_bytes(m.group(1))
  return totals


def train_program(c, topology: Topology, num_slices: int = 1, dcn_axis: str = "data"):
  """The config's training step for `topology` (x `num_slices` over the DCN), not yet compiled:
  (jitted step, its abstract sharded arguments, mesh shape, mesh, rules, StateFactory)."""
  c = with_slices(c, num_slices, dcn_axis)
  plan, mesh = _tpu_mesh(c, topology, num_slices)
  shape, rules = plan.mesh_shape, plan.rules
  states = train_state.StateFactory(plan, mesh)  # outside the mesh: optax runs init eagerly
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state, frozen = states.abstract()
    enc_graphdef, enc_state = encoders.abstract_encoders(plan, mesh) if c.data.source == "video" else (None, {})
    batch_sharding = batches.batch_sharding(mesh, rules)
    batch = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in batches.batch_spec(plan).items()
    }
    step = train_step.jit_train_step(plan, states, train_step.make_encode(plan, enc_graphdef))
  return step, (state, frozen, enc_state, batch), shape, mesh, rules, states


def argument_bytes(args) -> int:
  """Per-device bytes of abstract sharded arguments (the largest shard of each): a lower bound on the step's memory."""
  leaves = [x for x in jax.tree.leaves(args) if isinstance(x, jax.ShapeDtypeStruct)]
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def compile_train_step(c, topology: Topology, num_slices: int = 1, dcn_axis: str = "data"):
  """Lowers and compiles the config's training step for `topology` (x `num_slices` over the DCN);
  returns (compiled, info dict)."""
  step, args, shape, mesh, rules, states = train_program(c, topology, num_slices, dcn_axis)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    compiled = step.lower(*args).compile()
  lat = states.plan.latent_shape
  info = _report(
    compiled, topology, shape, flops.train_step_flops(states.cfg, c.data.batch_size, lat[:3], c.text.max_length)
  )
  info.update(dcn_traffic(args[0]["params"], shape))
  if num_slices > 1:
    info["hlo_dcn"] = hlo_dcn_transfers(compiled.as_text())
    info["hlo_dcn_bytes_per_device"] = sum(b for _, b in info["hlo_dcn"].values())
  return compiled, info


def compile_encoders(c, topology: Topology, num_slices: int = 1, dcn_axis: str = "data"):
  """Compiles the frozen encoders' program alone (umT5 on the captions, Wan-VAE on the clips of one
  global batch, weights sharded by the rules): what the raw-video path and the latent cache run."""
  c = with_slices(c, num_slices, dcn_axis)
  c.data.source = "video"
  plan, mesh = _tpu_mesh(c, topology, num_slices)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(plan.rules):
    enc_graphdef, enc_state = encoders.abstract_encoders(plan, mesh)
    batch_sharding = batches.batch_sharding(mesh, plan.rules)
    batch = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in batches.batch_spec(plan).items()
    }
    compiled = jax.jit(train_step.make_encode(plan, enc_graphdef)).lower(enc_state, batch).compile()
  return compiled, _report(compiled, topology, plan.mesh_shape, float("nan"))


def format_report(info: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  slices = info.get("num_slices", 1)
  lines = [
    f"topology {info['topology']}"
    + (f" x {slices} slices (DCN {info['dcn']})" if slices > 1 else "")
    + f" ({info['chips']} chips), mesh {info['mesh']}",
    f"per-device memory: arguments {gib(info['argument_bytes'])}, outputs {gib(info['output_bytes'])}, "
    f"temporaries {gib(info['temp_bytes'])}, aliased {gib(info['alias_bytes'])}",
    f"per-device total {gib(info['total_bytes'])} of {gib(info['hbm_bytes'])} HBM: "
    f"{'fits' if info['fits'] else 'DOES NOT FIT'}",
    f"step FLOPs: compiled {info['compiled_flops_per_device']:.3e} per device (XLA counts a scanned "
    f"layer once and no Pallas kernel)"
    + (
      ""
      if math.isnan(info["model_flops_per_step"])
      else f"; model (3 x forward matmuls) {info['model_flops_per_step']:.3e} per step"
    ),
  ]
  if slices > 1 and "dcn_bytes_per_slice" in info:
    size = lambda b: gib(b) if b >= 2**30 else f"{b / 2**20:.2f} MiB"
    lines.append(
      f"DCN per step (estimate from {size(info['gradient_bytes'])} of gradients): "
      f"{size(info['dcn_bytes_per_slice'])} per slice, {size(info['dcn_bytes_per_device'])} per device"
    )
    hlo = info.get("hlo_dcn") or {}
    if "hlo_dcn" in info:
      lines.append(
        f"DCN per step (compiled HLO, Megascale sends, loops x trip count): "
        f"{size(info['hlo_dcn_bytes_per_device'])} per device: "
        + (", ".join(f"{k} {int(n)} sends {size(b)}" for k, (n, b) in sorted(hlo.items())) or "none")
      )
  return "\n".join(lines)


PROGRAMS = {"train_step": compile_train_step, "encoders": compile_encoders}


def main(argv):
  del argv
  f = flags.FLAGS
  _, info = PROGRAMS[f.program](f.config, parse_topology(f.topology), f.num_slices, f.dcn_axis)
  print(format_report(info), flush=True)


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
    "config", None, "Training config (default: the --workdir's saved one).", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "A training workdir whose saved config.json to compile.")
  flags.DEFINE_string("topology", "v5p-8", "TPU topology, e.g. v5p-8, v5e-16, v6e-8, v7x-8, v5p:2x2x1.")
  flags.DEFINE_enum(
    "program",
    "train_step",
    list(PROGRAMS),
    "What to compile: the training step, or the frozen encoders alone (umT5 + Wan-VAE on one global batch).",
  )
  flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined by the DCN (multislice).")
  flags.DEFINE_enum(
    "dcn_axis",
    "data",
    list(sharding.DCN_AXES),
    "The mesh axis that spans the slices (when the config's mesh sets no dcn_data / dcn_fsdp).",
  )
  cli.run(main, saved_config=True)
