"""Cloud TPU generations, one table: the launchers (launch/topologies.py), `aot` (HBM per device, libtpu
topology names) and the MFU counter (flops.peak_flops) all read it.

  >>> generation, chips, topology = slice_shape("v5p-64")
  >>> generation.name, chips, topology, generation.hbm_gib, generation.peak_tflops
  ('v5p', 32, '2x4x4', 95, 459)

An accelerator type `PREFIX-N` counts TensorCores: two per chip on v4, v5p and TPU7x (v7x), one on v5e
(`v5litepod-N`) and v6e. JAX sees one device per chip (a v4 / v5p megacore of two TensorCores, or the one
core of v5e / v6e) except on TPU7x, which shows each of a chip's two TensorCores as a device.
Figures per chip are Cloud TPU's published ones: https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p,
.../v6e and .../tpu7x (peak bf16 compute, HBM capacity and bandwidth); software versions: .../tpu/docs/runtimes.
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str  # v4 | v5e | v5p | v6e | v7x
  prefix: str  # accelerator-type prefix gcloud and xpk use
  libtpu_name: str  # libtpu's topology prefix: "v5p:2x2x1"
  cores_per_chip: int  # TensorCores: the unit of the N in PREFIX-N
  hbm_gib: int  # HBM per chip
  peak_tflops: float  # dense bf16 TFLOP/s per chip
  hbm_gbps: float  # HBM bandwidth per chip, GB/s (the roofline's memory term: microverse_jax/fit.py)
  max_single_host_chips: int  # larger slices are multi-host, chips_per_host on each
  runtime_version: str | None  # TPU VM software version (None: GKE only)
  topologies: tuple[str, ...]  # chip grids of the standard slice shapes, as libtpu names them
  device_kinds: tuple[str, ...]  # jax Device.device_kind
  devices_per_chip: int = 1  # JAX devices: 1 (megacore or one core), 2 on TPU7x (two TensorCores)
  chips_per_host: int = 4  # of a multi-host slice
  chip_config: str | None = None  # libtpu's compile-only chip config, where its default is not the VM's

  @property
  def hbm_bytes(self) -> int:
    return self.hbm_gib * 2**30

  @property
  def peak_flops(self) -> float:
    return self.peak_tflops * 1e12

  @property
  def hbm_bandwidth(self) -> float:
    """HBM bytes/s per chip."""
    return self.hbm_gbps * 1e9


GRID_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
GRID_3D = ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16", "16x16x16")

# v4: libtpu's compile-only default shows each TensorCore as a device; a v4 VM runs the two as one megacore.
# TPU7x (Ironwood) is offered through GKE only; 2307 TFLOP/s is its bf16 peak (4614 fp8).
# fmt: off
GENERATIONS = {g.name: g for g in (
  # name, prefix, libtpu, cores, HBM GiB, bf16 TFLOP/s, HBM GB/s, 1-host chips, TPU VM software, grids, device kinds
  Generation("v4", "v4", "v4", 2, 32, 275, 1200, 4, "tpu-ubuntu2204-base", GRID_3D, ("TPU v4",),
             chip_config="megacore"),
  Generation("v5e", "v5litepod", "v5e", 1, 16, 197, 819, 8, "v2-alpha-tpuv5-lite", GRID_2D, ("TPU v5 lite", "TPU v5e")),
  Generation("v5p", "v5p", "v5p", 2, 95, 459, 2765, 4, "v2-alpha-tpuv5", GRID_3D, ("TPU v5", "TPU v5p")),
  Generation("v6e", "v6e", "v6e", 1, 32, 918, 1640, 8, "v2-alpha-tpuv6e", GRID_2D, ("TPU v6 lite", "TPU v6e")),
  Generation("v7x", "tpu7x", "tpu7x", 2, 192, 2307, 7380, 4, None, GRID_3D, ("TPU7x",), devices_per_chip=2),
)}
# fmt: on
_ALIASES = {"v5e": "v5litepod", "v7x": "tpu7x"}


def generation(name: str) -> Generation:
  """The generation called `name`: its name (v5p), accelerator-type prefix (v5litepod) or libtpu name (tpu7x)."""
  found = next((g for g in GENERATIONS.values() if name.lower() in (g.name, g.prefix, g.libtpu_name)), None)
  if found is None:
    raise ValueError(f"unknown TPU generation {name!r}: expected one of {', '.join(GENERATIONS)}")
  return found


def by_device_kind(kind: str) -> Generation | None:
  """The generation of a JAX device's `device_kind` ("TPU v5 lite"), or None (not a TPU this table knows)."""
  return next((g for g in GENERATIONS.values() if kind in g.device_kinds), None)


def valid_types(g: Generation) -> list[str]:
  """The accelerator types of the standard slices of `g`: v5p-8, v5p-16, ..."""
  return [f"{g.prefix}-{math.prod(int(x) for x in t.split('x')) * g.cores_per_chip}" for t in g.topologies]


def slice_shape(accelerator_type: str) -> tuple[Generation, int, str]:
  """'v5p-64' -> (v5p, 32 chips, '2x4x4'). Aliases: `v5e-N` is `v5litepod-N`, `v7x-N` is `tpu7x-N`.
  ValueError starting with the quoted type and naming what is accepted."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type.strip().lower())
  prefix = _ALIASES.get(match.group(1), match.group(1)) if match else None
  g = next((g for g in GENERATIONS.values() if g.prefix == prefix), None)
  if g is None:
    known = ", ".join(f"{g.prefix}-N ({g.name})" for g in GENERATIONS.values())
    raise ValueError(f"{accelerator_type!r}: expected one of {known}")
  chips, rem = divmod(int(match.group(2)), g.cores_per_chip)
  topology = next((t for t in g.topologies if math.prod(int(x) for x in t.split("x")) == chips), None)
  if rem or topology is None:
    raise ValueError(f"{accelerator_type!r}: {g.name} slices are {', '.join(valid_types(g))}")
  return g, chips, topology
