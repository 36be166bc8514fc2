"""Which weight layout and dot_general orientation XLA:CPU runs fastest, forward and backward.

A dense layer y = x W has three matmuls per training step: y = x W (forward), dx = dy Wᵀ and
dW = xᵀ dy (backward). With W stored (in, out) ("io", ours and flax's) or (out, in) ("oi", PyTorch's
nn.Linear), each runs as a dot_general whose operands XLA may have to transpose or pack. This times
all six (layout x matmul) at the DiT's shapes, interleaved, medians, in GFLOP/s.

  python bench/perf/dot_layouts.py                         # the base perf config's dense shapes
  python bench/perf/dot_layouts.py --tokens=640 --shapes=384x1536,1536x384 --repeats=21
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import train_step  # noqa: E402  (pins BENCH_THREADS cores before the CPU backend starts)
from jax import lax  # noqa: E402

# dot_general dimension numbers, ((lhs contracting, rhs contracting), (batch, batch)); x (M, K), dy (M, N)
PRODUCTS = {
  # layout "io": W (K, N)
  ("io", "forward"): (("x", "w"), (((1,), (0,)), ((), ()))),  # x W
  ("io", "dx"): (("dy", "w"), (((1,), (1,)), ((), ()))),  # dy Wᵀ
  ("io", "dW"): (("x", "dy"), (((0,), (0,)), ((), ()))),  # xᵀ dy -> (K, N)
  # layout "oi": W (N, K)
  ("oi", "forward"): (("x", "w"), (((1,), (1,)), ((), ()))),  # x Wᵀ
  ("oi", "dx"): (("dy", "w"), (((1,), (0,)), ((), ()))),  # dy W
  ("oi", "dW"): (("dy", "x"), (((0,), (0,)), ((), ()))),  # dyᵀ x -> (N, K)
}


def bench_shape(m: int, k: int, n: int, repeats: int) -> dict[tuple[str, str], float]:
  """(layout, matmul) -> GFLOP/s of one (M, K) x (K, N) dense layer's matmuls."""
  rng = np.random.default_rng(0)
  arrays = {
    "x": rng.standard_normal((m, k), np.float32),
    "dy": rng.standard_normal((m, n), np.float32),
  }
  weights = {"io": rng.standard_normal((k, n), np.float32), "oi": rng.standard_normal((n, k), np.float32)}
  runners = {}
  for (layout, name), ((a, b), dims) in PRODUCTS.items():
    operands = [jax.device_put(weights[layout] if v == "w" else arrays[v]) for v in (a, b)]
    fn = jax.jit(lambda p, q, dims=dims: lax.dot_general(p, q, dims)).lower(*operands).compile()
    runners[layout, name] = lambda fn=fn, operands=operands: fn(*operands).block_until_ready()
  times = {key: [] for key in runners}
  for fn in runners.values():
    fn()
  for _ in range(repeats):
    for key, fn in runners.items():
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  return {key: 2 * m * k * n / statistics.median(ts) / 1e9 for key, ts in times.items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tokens", type=int, default=640, help="M: batch x tokens (base: 2 x 320)")
  p.add_argument("--shapes", default="384x384,384x1536,1536x384", help="comma-separated KxN dense shapes")
  p.add_argument("--repeats", type=int, default=15)
  args = p.parse_args(argv)
  print(f"backend {jax.default_backend()}, threads {train_step.THREADS}")
  out = {}
  for shape in args.shapes.split(","):
    k, n = (int(v) for v in shape.split("x"))
    rates = bench_shape(args.tokens, k, n, args.repeats)
    out[shape] = {f"{layout}/{name}": r for (layout, name), r in rates.items()}
    cells = " | ".join(f"{layout} {name} {r:6.1f}" for (layout, name), r in rates.items())
    print(f"M={args.tokens} K={k} N={n} GFLOP/s: {cells}", flush=True)
  return out


if __name__ == "__main__":
  main()
