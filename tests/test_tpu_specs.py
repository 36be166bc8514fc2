"""One TPU spec table (microverse_jax/tpu_specs.py): `aot`, the launchers and the MFU counter give the same
HBM, chips and peak for every generation, the figures are Cloud TPU's published ones, and no module holds a
second copy of them."""

import ast
import os
import types

import pytest

from microverse_jax import aot, flops, tpu_specs
from microverse_jax.launch import topologies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per chip: (HBM GiB, peak bf16 TFLOP/s), from cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e,tpu7x}.
PUBLISHED = {"v4": (32, 275), "v5e": (16, 197), "v5p": (95, 459), "v6e": (32, 918), "v7x": (192, 2307)}


def test_the_table_holds_cloud_tpus_published_figures():
  assert {name: (g.hbm_gib, g.peak_tflops) for name, g in tpu_specs.GENERATIONS.items()} == PUBLISHED


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_aot_the_launchers_and_flops_agree_on_each_generation(name):
  g = tpu_specs.GENERATIONS[name]
  for accelerator_type in tpu_specs.valid_types(g):
    tpu, topology = topologies.parse(accelerator_type), aot.parse_topology(accelerator_type)
    assert tpu.generation is g and tpu.devices == tpu.chips * g.devices_per_chip
    assert (topology.name, topology.chips) == (f"{g.libtpu_name}:{tpu.topology}", tpu.chips)
    assert topology.hbm_bytes * g.devices_per_chip == g.hbm_gib * 2**30  # aot budgets per JAX device
    assert aot.parse_topology(topology.name) == topology  # libtpu's own name reads back the same
  for kind in g.device_kinds:
    peak = flops.peak_flops(types.SimpleNamespace(device_kind=kind))  # per JAX device
    assert peak * g.devices_per_chip == g.peak_tflops * 1e12, kind


def test_v7x_is_a_topology_for_aot():
  topology = aot.parse_topology("v7x-8")
  assert (topology.name, topology.chips, topology.hbm_bytes) == ("tpu7x:2x2x1", 4, 96 * 2**30)
  assert aot.parse_topology("tpu7x-8") == aot.parse_topology("v7x:2x2x1") == aot.parse_topology("tpu7x:2x2x1")
  assert flops.peak_flops(types.SimpleNamespace(device_kind="TPU7x")) == 2307e12 / 2  # two devices a chip


def test_unknown_topologies_and_devices_name_what_is_accepted():
  with pytest.raises(ValueError, match=r"--topology='v5p-6': v5p slices are v5p-8, v5p-16"):
    aot.parse_topology("v5p-6")
  with pytest.raises(ValueError, match=r"--topology='v9-8': expected one of v4-N \(v4\), v5litepod-N"):
    aot.parse_topology("v9-8")
  with pytest.raises(ValueError, match=r"--topology='v9:2x2': unknown TPU generation 'v9'"):
    aot.parse_topology("v9:2x2")
  with pytest.raises(ValueError, match=r"GENERATION:AxB or GENERATION:AxBxC"):
    aot.parse_topology("v5p:2x")
  for kind in ("cpu", "TPU v4 lite", "TPU v3"):
    assert flops.peak_flops(types.SimpleNamespace(device_kind=kind)) is None
  assert flops.peak_flops(types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")) == 989e12


def _figures(source: str) -> list[tuple[int, object]]:
  """(line, value) of each TPU figure of the table written as a constant in `source`: runtime versions, device
  kinds, accelerator-type and libtpu prefixes, peaks and HBM sizes (constant expressions such as 95 * 2**30
  folded). The plain generation names may key other tables (kernel tuning), so they are not counted."""
  specs = tpu_specs.GENERATIONS.values()
  strings = {s for g in specs for s in (g.prefix, g.libtpu_name, g.runtime_version, *g.device_kinds)}
  strings -= set(tpu_specs.GENERATIONS) | {None}
  numbers = {g.peak_flops for g in specs} | {g.hbm_bytes for g in specs}
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Constant):
      value = node.value
    elif isinstance(node, ast.BinOp) and all(
      isinstance(n, (ast.BinOp, ast.Constant, ast.operator)) for n in ast.walk(node)
    ):
      value = eval(compile(ast.Expression(node), "<constant>", "eval"), {"__builtins__": {}})
    else:
      continue
    if not isinstance(value, bool) and value in (strings if isinstance(value, str) else numbers):
      found.append((node.lineno, value))
  return found


def test_the_checker_sees_the_tables_this_one_replaced():
  old_aot = 'TPU_GENERATIONS = {"v5p": ("v5p", 2, 95 * 2**30, 3), "v5e": ("v5e", 1, 16 * 2**30, 2)}'
  old_flops = 'PEAK_FLOPS = {"v5 lite": 197e12, "v5p": 459e12}'
  old_launch = 'Generation("v5e", "v5litepod", 1, 8, "v2-alpha-tpuv5-lite", _TOPOLOGIES_2D)'
  assert [v for _, v in _figures(old_aot)] == [95 * 2**30, 16 * 2**30]
  assert [v for _, v in _figures(old_flops)] == [197e12, 459e12]
  assert [v for _, v in _figures(old_launch)] == ["v5litepod", "v2-alpha-tpuv5-lite"]


def test_no_other_module_holds_a_tpu_figure():
  found = []
  for folder in ("microverse_jax", "launch", "bench", "configs", "data"):
    for dirpath, _, names in os.walk(os.path.join(REPO, folder)):
      for name in names:
        path = os.path.join(dirpath, name)
        if name.endswith(".py") and path != tpu_specs.__file__:
          source = open(path, encoding="utf-8").read()
          found += [f"{os.path.relpath(path, REPO)}:{line}: {value!r}" for line, value in _figures(source)]
  assert not found, found
