"""Attention on a mesh of 8 simulated CPU devices equals unsharded attention (values and gradients).

The checks run in a subprocess (this file as a script) because the device count is fixed when JAX
starts. Meshes are (data, fsdp, tensor, context) with automatic axes, entered with jax.set_mesh;
`attention` then shards itself (batch over data/fsdp, heads over tensor, Ulysses over context).
"""

from __future__ import annotations

import json
import os

TOL = 2e-5  # fp32; the sharded program does the same arithmetic in another order


def _run_checks():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from microverse_jax.kernels.attention import attention
  from microverse_jax.sharding import make_mesh

  results = {}

  def inputs(b, tq, tk, n, d, masked):
    rng = np.random.default_rng(tq + tk)  # numpy-made: no eager XLA compiles
    normal = lambda t: jnp.asarray(rng.standard_normal((b, t, n, d), np.float32))
    q, k, v, do = normal(tq), normal(tk), normal(tk), normal(tq)
    mask = jnp.asarray(rng.uniform(size=(b, tk)) > 0.25) if masked else None
    return q, k, v, do, mask

  def value_and_grads(impl, q, k, v, do, mask):
    def run(q, k, v):
      out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, kv_mask=mask, impl=impl, interpret=True), q, k, v)
      return out, vjp(do)

    return jax.jit(run)(q, k, v)

  def compare(name, mesh_shape, impl, *shape):
    q, k, v, do, mask = inputs(*shape)
    ref = value_and_grads("xla", q, k, v, do, mask)  # unsharded
    mesh = make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
      got = value_and_grads(impl, q, k, v, do, mask)
      hlo = (
        jax.jit(lambda q, k, v: attention(q, k, v, kv_mask=mask, impl=impl, interpret=True)).lower(q, k, v).as_text()
      )
    errs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))]
    results[name] = {
      "max_err": max(errs),
      "all_to_all": "all_to_all" in hlo,
      "shard_map": "sdy.manual_computation" in hlo,
    }

  # Pure Ulysses: 8-way context, 8 heads; T=100 is padded to 104 inside.
  compare("ulysses_context8", {"context": 8}, "xla", 1, 100, 100, 8, 16, True)
  # Mixed mesh, our Pallas GPU kernel (interpret mode) inside the shard_map.
  compare("mixed_pallas_gpu", {"data": 2, "tensor": 2, "context": 2}, "pallas_gpu", 2, 64, 64, 4, 16, False)
  # Cross-attention: queries sequence-sharded, text keys replicated over context, no all-to-all.
  compare("cross_context4", {"fsdp": 2, "context": 4}, "xla", 2, 64, 24, 4, 16, True)

  try:
    with jax.set_mesh(make_mesh({"context": 8})):
      q, k, v, _, _ = inputs(1, 64, 64, 4, 16, False)
      attention(q, k, v, impl="xla")
    results["bad_heads_error"] = ""
  except ValueError as e:
    results["bad_heads_error"] = str(e)
  print("RESULTS " + json.dumps(results))


def test_sharded_attention_equals_unsharded(run_on_cpu_devices):
  proc = run_on_cpu_devices([os.path.abspath(__file__)], 8)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  results = json.loads(lines[-1][len("RESULTS ") :])
  for name in ("ulysses_context8", "mixed_pallas_gpu", "cross_context4"):
    assert results[name]["max_err"] < TOL, (name, results[name])
    assert results[name]["shard_map"], name
  assert results["ulysses_context8"]["all_to_all"]
  assert results["mixed_pallas_gpu"]["all_to_all"]
  assert not results["cross_context4"]["all_to_all"]
  assert "divisible by mesh axis context=8" in results["bad_heads_error"]


if __name__ == "__main__":
  _run_checks()
