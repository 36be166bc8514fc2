"""TPU accelerator types -> chips, hosts (TPU VM workers), chip topology and TPU VM runtime version.

  >>> s = parse("v5p-64")
  >>> s.chips, s.hosts, s.chips_per_host, s.topology, s.runtime_version
  (32, 8, 4, '2x4x4', 'v2-alpha-tpuv5')

The generations are the one table in microverse_jax/tpu_specs.py (which `aot` and the MFU counter read too).
The number in an accelerator type counts TensorCores: two per chip on v4, v5p and TPU7x (v7x), one on
v5e (`v5litepod-N`) and v6e. Multi-host slices have 4 chips per host; v5e and v6e also come as one
8-chip host (`v5litepod-8`, `v6e-8`). TPU7x (Ironwood) is offered through GKE only: launch it with
launch/xpk.py. JAX sees one device per chip (v4, v5p: one megacore of two TensorCores) except on TPU7x,
which shows each of a chip's two TensorCores as a device. Aliases: `v5e-N` is `v5litepod-N`, `v7x-N` is `tpu7x-N`.
"""

from __future__ import annotations

import dataclasses

from microverse_jax.tpu_specs import Generation, slice_shape

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


def parse(accelerator_type: str) -> TpuSlice:
  """'v5p-64' -> TpuSlice(chips=32, hosts=8, topology='2x4x4'); ValueError for unknown types."""
  try:
    generation, chips, topology = slice_shape(accelerator_type)
  except ValueError as e:
    raise ValueError(f"accelerator type {e}") from None
  hosts = 1 if chips <= generation.max_single_host_chips else chips // generation.chips_per_host
  return TpuSlice(f"{generation.prefix}-{chips * generation.cores_per_chip}", generation, chips, hosts, topology)
