"""TPU accelerator types -> chips, hosts (TPU VM workers), chip topology and TPU VM runtime version.

  >>> s = parse("v5p-64")
  >>> s.chips, s.hosts, s.chips_per_host, s.topology, s.runtime_version
  (32, 8, 4, '2x4x4', 'v2-alpha-tpuv5')

The number in an accelerator type counts TensorCores: two per chip on v5p and TPU7x (v7x), one on
v5e (`v5litepod-N`) and v6e. Multi-host slices have 4 chips per host; v5e and v6e also come as one
8-chip host (`v5litepod-8`, `v6e-8`). TPU7x (Ironwood) is offered through GKE only: launch it with
launch/xpk.py. JAX sees one device per chip (v5p: one megacore of two TensorCores) except on TPU7x,
which shows each of a chip's two TensorCores as a device. Aliases: `v5e-N` is `v5litepod-N`, `v7x-N` is `tpu7x-N`.
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str  # v5e | v5p | v6e | v7x
  prefix: str  # accelerator-type prefix gcloud and xpk use
  cores_per_chip: int
  max_single_host_chips: int  # larger slices are multi-host, 4 chips per host
  runtime_version: str | None  # TPU VM software version (None: GKE only)
  topologies: tuple[str, ...]  # chip grids of the standard slice shapes
  devices_per_chip: int = 1  # JAX devices: 1 (megacore or one core), 2 on TPU7x (two TensorCores)


_TOPOLOGIES_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
_TOPOLOGIES_3D = (
  "2x2x1",
  "2x2x2",
  "2x2x4",
  "2x4x4",
  "4x4x4",
  "4x4x8",
  "4x8x8",
  "8x8x8",
  "8x8x16",
  "8x16x16",
  "16x16x16",
)

GENERATIONS = {
  g.name: g
  for g in (
    Generation("v5e", "v5litepod", 1, 8, "v2-alpha-tpuv5-lite", _TOPOLOGIES_2D),
    Generation("v5p", "v5p", 2, 4, "v2-alpha-tpuv5", _TOPOLOGIES_3D),
    Generation("v6e", "v6e", 1, 8, "v2-alpha-tpuv6e", _TOPOLOGIES_2D),
    Generation("v7x", "tpu7x", 2, 4, None, _TOPOLOGIES_3D, devices_per_chip=2),
  )
}
_ALIASES = {"v5e": "v5litepod", "v7x": "tpu7x"}
MAX_SLICES = 256  # multislice: beyond the largest published runs (199 slices); a typo past it is refused


def check_num_slices(num_slices: int) -> None:
  """ValueError naming --num_slices unless it is 1 .. MAX_SLICES."""
  if not 1 <= num_slices <= MAX_SLICES:
    raise ValueError(f"--num_slices={num_slices}: expected a positive count of slices, at most {MAX_SLICES}")


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """One TPU slice: what `gcloud compute tpus` and `xpk` call `accelerator_type` / `tpu-type`."""

  accelerator_type: str  # canonical, e.g. "v5p-64", "v5litepod-16", "tpu7x-8"
  generation: Generation
  chips: int
  hosts: int  # TPU VM workers: gcloud --worker=0..hosts-1
  topology: str  # chip grid, e.g. "2x4x4"

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts

  @property
  def devices(self) -> int:
    """JAX devices on the slice (what the trainer's mesh spans)."""
    return self.chips * self.generation.devices_per_chip

  @property
  def multi_host(self) -> bool:
    return self.hosts > 1

  @property
  def runtime_version(self) -> str | None:
    return self.generation.runtime_version

  @property
  def workers(self) -> range:
    return range(self.hosts)


def valid_types(generation: Generation) -> list[str]:
  cores = lambda t: math.prod(int(x) for x in t.split("x")) * generation.cores_per_chip
  return [f"{generation.prefix}-{cores(t)}" for t in generation.topologies]


def parse(accelerator_type: str) -> TpuSlice:
  """'v5p-64' -> TpuSlice(chips=32, hosts=8, topology='2x4x4'); ValueError for unknown types."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type.strip().lower())
  prefix = _ALIASES.get(match.group(1), match.group(1)) if match else None
  generation = next((g for g in GENERATIONS.values() if g.prefix == prefix), None)
  if generation is None:
    known = ", ".join(f"{g.prefix}-N ({g.name})" for g in GENERATIONS.values())
    raise ValueError(f"accelerator type {accelerator_type!r}: expected one of {known}")
  cores = int(match.group(2))
  chips, rem = divmod(cores, generation.cores_per_chip)
  topology = next((t for t in generation.topologies if math.prod(int(x) for x in t.split("x")) == chips), None)
  if rem or topology is None:
    raise ValueError(
      f"accelerator type {accelerator_type!r}: {generation.name} slices are {', '.join(valid_types(generation))}"
    )
  hosts = 1 if chips <= generation.max_single_host_chips else chips // 4
  return TpuSlice(f"{generation.prefix}-{cores}", generation, chips, hosts, topology)
