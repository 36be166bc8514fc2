"""Ahead-of-time compile of the real training step for a TPU topology, on this (CPU) machine.

  python -m microverse_jax.aot --config=configs/wan2_1.py:1.3b,full --topology=v5p-8 [--config.key=value]

Needs libtpu (`pip install libtpu`; in the test extra). Prints per-device memory (arguments, temporaries,
total vs the chip's HBM) and the step's FLOPs, proving a run fits before a slice is rented.
Topologies: `v5p-N` (N TensorCores = 2 x chips), `v5e-N` / `v6e-N` (N chips), or a raw libtpu name
such as `v5p:2x2x1`.
"""
from __future__ import annotations

import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: no TPU is held

import dataclasses
import math

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import AxisType, Mesh
from ml_collections import config_flags

from microverse_jax import cli, factory, flops, sharding, train

# generation -> (libtpu name, TensorCores per chip in the "-N" suffix, HBM bytes per chip, mesh rank)
TPU_GENERATIONS = {"v5p": ("v5p", 2, 95 * 2**30, 3), "v5e": ("v5e", 1, 16 * 2**30, 2),
                   "v6e": ("v6e", 1, 32 * 2**30, 2)}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str          # libtpu topology name, e.g. "v5p:2x2x2"
  chips: int
  hbm_bytes: int


# chips -> slice shape (libtpu names): v5p slices are 3-D tori, v5e / v6e 2-D.
GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
           512: "8x8x8"}
GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def parse_topology(spec: str) -> Topology:
  """'v5p-8' / 'v5e-16' / 'v6e-8' / 'v5p:2x2x1' -> Topology."""
  gen = spec.split(":")[0].split("-")[0]
  if gen not in TPU_GENERATIONS:
    raise ValueError(f"--topology={spec!r}: expected v5p-N, v5e-N, v6e-N or a name like v5p:2x2x1")
  libtpu_name, cores, hbm, rank = TPU_GENERATIONS[gen]
  if ":" in spec:
    return Topology(spec, math.prod(int(x) for x in spec.split(":")[1].split("x")), hbm)
  count = spec.partition("-")[2]
  chips = int(count) // cores if count.isdigit() else 0
  grids = GRID_3D if rank == 3 else GRID_2D
  if chips not in grids:
    raise ValueError(f"--topology={spec!r}: {gen} slices here have {sorted(k * cores for k in grids)} "
                     f"{'TensorCores' if cores > 1 else 'chips'}")
  return Topology(f"{libtpu_name}:{grids[chips]}", chips, hbm)


def _tpu_mesh(c, topology: Topology):
  """(mesh shape, Mesh over the topology's devices, rules) for the config."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology.name).devices)
  shape = factory.validate(c, len(devices))
  mesh = Mesh(np.asarray(devices).reshape([shape[a] for a in sharding.MESH_AXES]), sharding.MESH_AXES,
              axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES))
  return shape, mesh, sharding.logical_rules(c.sharding_rules.to_dict())


def _report(compiled, topology: Topology, shape: dict, model_flops: float) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  return {"topology": topology.name, "chips": math.prod(shape.values()), "mesh": shape,
          "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
          "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
          "total_bytes": total, "hbm_bytes": topology.hbm_bytes, "fits": total <= topology.hbm_bytes,
          "compiled_flops_per_device": float((cost or {}).get("flops", float("nan"))),
          "model_flops_per_step": model_flops}


def compile_train_step(c, topology: Topology):
  """Lowers and compiles the config's training step for `topology`; returns (compiled, info dict)."""
  shape, mesh, rules = _tpu_mesh(c, topology)
  states = factory.StateFactory(c, mesh, rules)  # outside the mesh: optax runs init eagerly
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state, frozen = states.abstract()
    enc_graphdef, enc_state = factory.abstract_encoders(c, mesh, rules) if c.data.source == "video" else (None, {})
    batch_sharding = factory.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in factory.batch_spec(c).items()}
    step = train.jit_train_step(c, states, train.make_encode(c, enc_graphdef))
    compiled = step.lower(state, frozen, enc_state, batch).compile()
  lat = factory.latent_shape(c)
  return compiled, _report(compiled, topology, shape,
                           flops.train_step_flops(states.cfg, c.data.batch_size, lat[:3], c.text.max_length))


def compile_encoders(c, topology: Topology):
  """Compiles the frozen encoders' program alone (umT5 on the captions, Wan-VAE on the clips of one
  global batch, weights sharded by the rules): what the raw-video path and the latent cache run."""
  c = c.copy_and_resolve_references()
  c.data.source = "video"
  shape, mesh, rules = _tpu_mesh(c, topology)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    enc_graphdef, enc_state = factory.abstract_encoders(c, mesh, rules)
    batch_sharding = factory.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in factory.batch_spec(c).items()}
    compiled = jax.jit(train.make_encode(c, enc_graphdef)).lower(enc_state, batch).compile()
  return compiled, _report(compiled, topology, shape, float("nan"))


def format_report(info: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  return "\n".join([
      f"topology {info['topology']} ({info['chips']} chips), mesh {info['mesh']}",
      f"per-device memory: arguments {gib(info['argument_bytes'])}, outputs {gib(info['output_bytes'])}, "
      f"temporaries {gib(info['temp_bytes'])}, aliased {gib(info['alias_bytes'])}",
      f"per-device total {gib(info['total_bytes'])} of {gib(info['hbm_bytes'])} HBM: "
      f"{'fits' if info['fits'] else 'DOES NOT FIT'}",
      f"step FLOPs: compiled {info['compiled_flops_per_device']:.3e} per device (XLA counts a scanned "
      f"layer once and no Pallas kernel)" + ("" if math.isnan(info["model_flops_per_step"]) else
      f"; model (3 x forward matmuls) {info['model_flops_per_step']:.3e} per step")])


PROGRAMS = {"train_step": compile_train_step, "encoders": compile_encoders}


def main(argv):
  del argv
  _, info = PROGRAMS[flags.FLAGS.program](flags.FLAGS.config, parse_topology(flags.FLAGS.topology))
  print(format_report(info), flush=True)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config (default: the --workdir's saved one).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "A training workdir whose saved config.json to compile.")
  flags.DEFINE_string("topology", "v5p-8", "TPU topology, e.g. v5p-8, v5e-16, v6e-8, v5p:2x2x1.")
  flags.DEFINE_enum("program", "train_step", list(PROGRAMS), "What to compile: the training step, or the "
                    "frozen encoders alone (umT5 + Wan-VAE on one global batch).")
  cli.run(main, saved_config=True)
