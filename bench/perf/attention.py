"""Attention throughput (TFLOP/s) per implementation at Wan2.1 shapes, forward and forward+backward.

Two cases: self-attention over the video tokens (B, T, N, D) and cross-attention from those tokens
to L text keys with a padding mask. FLOPs follow the FlashAttention convention (model FLOPs, no
recomputation): forward 4 * B * N * Tq * Tk * D, forward+backward 3.5x that.

  python bench/perf/attention.py                          # Wan shapes, impls for this backend
  python bench/perf/attention.py --impls=xla --seq=4096 --dtype=float32   # CPU-sized
  python bench/perf/attention.py --json=/tmp/attention.json

Timings are the median of --iters runs of a jitted function after --warmup runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from microverse_jax.kernels.attention import attention

IMPLS_BY_BACKEND = {
    "cpu": ("xla",),
    "gpu": ("cudnn", "pallas_gpu", "xla"),
    "tpu": ("pallas_tpu", "splash", "xla"),
}


def _timed(fn, args, warmup: int, iters: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _programs(impl: str, mask):
  def fwd(q, k, v):
    return attention(q, k, v, kv_mask=mask, impl=impl)

  def fwd_bwd(q, k, v):
    def loss(q, k, v):
      return jnp.sum(fwd(q, k, v).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return {"fwd": jax.jit(fwd), "fwd+bwd": jax.jit(fwd_bwd)}


def run(args) -> list[dict]:
  backend = jax.default_backend()
  impls = args.impls.split(",") if args.impls else IMPLS_BY_BACKEND.get(backend, ("xla",))
  dtype = jnp.dtype(args.dtype)
  b, t, n, d, l = args.batch, args.seq, args.heads, args.head_dim, args.text_len
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (b, t, n, d), dtype)
  text = jax.random.normal(keys[1], (b, l, n, d), dtype)
  text_mask = jnp.arange(l)[None, :] < jnp.minimum(args.text_valid, l)  # prompt then padding
  text_mask = jnp.broadcast_to(text_mask, (b, l))
  cases = {"self": ((x, x, x), None, t), "cross": ((x, text, text), text_mask, l)}
  rows = []
  for case, (qkv, mask, tk) in cases.items():
    flops_fwd = 4 * b * n * t * tk * d
    for impl in impls:
      for mode, fn in _programs(impl, mask).items():
        flops = flops_fwd * (3.5 if mode == "fwd+bwd" else 1.0)
        try:
          seconds = _timed(fn, qkv, args.warmup, args.iters)
          row = dict(case=case, impl=impl, mode=mode, ms=seconds * 1e3,
                     tflops=flops / seconds / 1e12)
        except Exception as e:  # e.g. cudnn without a GPU, out of memory: report and go on
          row = dict(case=case, impl=impl, mode=mode, error=f"{type(e).__name__}: {str(e)[:200]}")
        row.update(B=b, Tq=t, Tk=tk, N=n, D=d, dtype=dtype.name)
        rows.append(row)
        print(_format(row), flush=True)
  return rows


def _format(row: dict) -> str:
  shape = f"B={row['B']} Tq={row['Tq']} Tk={row['Tk']} N={row['N']} D={row['D']} {row['dtype']}"
  if "error" in row:
    return f"| {row['case']} | {row['impl']} | {row['mode']} | {shape} | failed: {row['error']} |"
  return (f"| {row['case']} | {row['impl']} | {row['mode']} | {shape} | "
          f"{row['ms']:.2f} ms | {row['tflops']:.3f} TFLOP/s |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impls", default="", help="comma-separated; default: this backend's")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--seq", type=int, default=32760, help="video tokens T")
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--text-len", type=int, default=512, help="text keys L (padded)")
  parser.add_argument("--text-valid", type=int, default=226, help="unmasked text keys")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"# device: {device.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s), "
        f"jax {jax.__version__}")
  print("| case | impl | mode | shape | time | throughput |\n|---|---|---|---|---|---|")
  rows = run(args)
  if args.json:
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"device": device.device_kind, "backend": jax.default_backend(), "rows": rows}, f,
                indent=1)
    os.replace(tmp, args.json)


if __name__ == "__main__":
  main()
