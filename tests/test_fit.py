"""The fit planner (`python -m microverse_jax.fit`) at CPU size: tiny configs compiled for TPU topologies."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microverse_jax import aot, fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/microsim_tiny.py:test"


def test_meshes_split_the_devices_within_the_heads():
  assert fit.meshes(4, 2) == [(4, 1, 1), (2, 2, 1), (2, 1, 2)]
  assert (1, 4, 1) in fit.meshes(4, 12) and (1, 4, 2) not in fit.meshes(8, 12)  # 12 heads: not over 8
  assert fit.Combo("nothing_saveable", 8, 1, 1, 2).overrides(grad_accum=2)[-1] == "--config.data.batch_size=32"


def test_hlo_cost_counts_each_layer_of_a_scan():
  """A scanned stack of matmuls, forward and backward: XLA's cost_analysis counts one layer; hlo_cost all."""
  layers, m, k = 6, 512, 256
  devices = aot.topology_devices(aot.parse_topology("v5p-8"))
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def loss(x, ws):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0].sum()

  args = (
    jax.ShapeDtypeStruct((4 * m, k), jnp.float32, sharding=shard),
    jax.ShapeDtypeStruct((layers, k, k), jnp.float32, sharding=rep),
  )
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
  want = layers * 3 * 2 * m * k * k  # per device: forward, and the two backward matmuls, of each layer
  cost = fit.hlo_cost(compiled.as_text())
  assert want <= cost["flops"] < 1.1 * want and cost["uncounted_kernels"] == 0, (cost, want)
  assert cost["bytes"] > layers * k * k * 4  # every layer's weight is read at least once
  assert compiled.cost_analysis()["flops"] < 0.5 * want  # what the planner does not use


def test_aot_fit_searches_caches_and_names_the_fastest_overrides(tmp_path):
  cache = tmp_path / "fit.json"
  cmd = [
    sys.executable, "-m", "microverse_jax.fit", f"--config={TINY}", "--topology=v5p-8,v6e-8",
    "--policies=nothing_saveable,offload_block_outputs", "--meshes=4x1x1,8x1x1", "--batches=1,2",
    f"--cache={cache}",
  ]  # fmt: skip
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  out = first.stdout
  assert "[1/8 " in out and "[8/8 " in out and "(cached)" not in out, out
  assert "v5p-8     offload_block_outputs  4 x 1 x 1" in out and "v6e-8     nothing_saveable       8 x 1 x 1" in out
  for spec, fsdp in (("v5p-8", 4), ("v6e-8", 8)):
    assert f"{spec}: fastest that fits:" in out
    assert f"--config.mesh.data=1 --config.mesh.fsdp={fsdp} --config.mesh.tensor=1 --config.mesh.context=1" in out
  records = json.loads(cache.read_text())
  assert len(records) == 8 and all(r["total_bytes"] > 0 and r["hlo_flops"] > 0 for r in records.values())
  assert {r["mfu"] > 0 and r["roofline_s"] > 0 for r in records.values()} == {True}
  assert {r["host_bytes"] > 0 for r in records.values() if "offload_block_outputs" in r["label"]} == {True}
  assert not list(tmp_path.glob(".fit-*"))  # written whole: no temporary left

  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count("(cached)") == 8, again.stdout
  assert again.stdout.splitlines()[-6:] == out.splitlines()[-6:]  # the same table's end and the same choice


def test_a_mesh_of_another_slice_is_named():
  from microverse_jax.configs import microsim_tiny

  planner = fit.Planner(microsim_tiny.get_config("test"), None)
  with pytest.raises(ValueError, match=r"--meshes: none of \[\(3, 1, 1\)\] is a mesh of 4 devices of v5p-8"):
    planner.search(["v5p-8"], ["none"], [(3, 1, 1)], [1])
