"""Attention throughput (TFLOP/s) per implementation at Wan2.1 shapes, forward and forward+backward.

Two cases: self-attention over the video tokens (B, T, N, D) and cross-attention from those tokens
to L text keys with a padding mask. FLOPs follow the FlashAttention convention (model FLOPs, no
recomputation): forward 4 * B * N * Tq * Tk * D, forward+backward 3.5x that.

  python bench/perf/attention.py                          # Wan shapes, impls for this backend
  python bench/perf/attention.py --impls=xla --seq=4096 --dtype=float32   # CPU-sized
  python bench/perf/attention.py --json=/tmp/attention.json
  python bench/perf/attention.py --aot=v5p:2x2x1 --context=4   # compile-only, any host with libtpu

Timings are the median of --iters runs of a jitted function after --warmup runs. With --aot the
programs are compiled ahead of time for a TPU topology (tokens sharded over `context`, examples over
`data` = chips / context, --batch examples per data shard) and the per-device memory is reported.
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


def compile_only(args) -> list[dict]:
  """Per-device memory of each program compiled for the TPU topology `args.aot`."""
  import numpy as np
  from jax.experimental import topologies
  from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

  devices = topologies.get_topology_desc(platform="tpu", topology_name=args.aot).devices
  data = len(devices) // args.context
  mesh = Mesh(
    np.array(devices).reshape(data, 1, 1, args.context),
    ("data", "fsdp", "tensor", "context"),
    axis_types=(AxisType.Auto,) * 4,
  )
  impls = args.impls.split(",") if args.impls else IMPLS_BY_BACKEND["tpu"]
  b, t, n, d, l = args.batch * data, args.seq, args.heads, args.head_dim, args.text_len
  dtype = jnp.dtype(args.dtype)
  tokens, text = NamedSharding(mesh, P("data", "context")), NamedSharding(mesh, P("data"))
  x = jax.ShapeDtypeStruct((b, t, n, d), dtype, sharding=tokens)
  txt = jax.ShapeDtypeStruct((b, l, n, d), dtype, sharding=text)
  mask = jax.ShapeDtypeStruct((b, l), jnp.bool_, sharding=text)
  rows = []
  for case, (qkv, masked, tk) in {"self": ((x, x, x), False, t), "cross": ((x, txt, txt), True, l)}.items():
    for impl in impls:
      for mode in ("fwd", "fwd+bwd"):

        def program(q, k, v, m):
          return _programs(impl, m)[mode](q, k, v)

        row = dict(
          case=case,
          impl=impl,
          mode=mode,
          B=b,
          Tq=t,
          Tk=tk,
          N=n,
          D=d,
          dtype=dtype.name,
          topology=args.aot,
          context=args.context,
        )
        try:
          with jax.set_mesh(mesh):
            compiled = jax.jit(program).lower(*qkv, mask if masked else None).compile()
          mem = compiled.memory_analysis()
          row.update(
            arguments_mib=mem.argument_size_in_bytes / 2**20,
            temp_mib=mem.temp_size_in_bytes / 2**20,
            outputs_mib=mem.output_size_in_bytes / 2**20,
          )
        except Exception as e:  # e.g. the xla impl's T x T logits do not fit
          row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(_format(row), flush=True)
  return rows


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
          row = dict(case=case, impl=impl, mode=mode, ms=seconds * 1e3, tflops=flops / seconds / 1e12)
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
  if "temp_mib" in row:
    return (
      f"| {row['case']} | {row['impl']} | {row['mode']} | {shape} | "
      f"args {row['arguments_mib']:.0f} MiB, temp {row['temp_mib']:.0f} MiB, "
      f"out {row['outputs_mib']:.0f} MiB per device |"
    )
  return (
    f"| {row['case']} | {row['impl']} | {row['mode']} | {shape} | {row['ms']:.2f} ms | {row['tflops']:.3f} TFLOP/s |"
  )


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
  parser.add_argument("--aot", default="", help="compile only, for this TPU topology (e.g. v5p:2x2x1)")
  parser.add_argument("--context", type=int, default=1, help="with --aot: the context axis size")
  args = parser.parse_args()
  if args.aot:
    device = f"{args.aot} (compiled ahead of time on {jax.devices()[0].device_kind})"
    print(f"# {device}, context={args.context}, jax {jax.__version__}")
    print("| case | impl | mode | shape | memory |\n|---|---|---|---|---|")
    rows = compile_only(args)
  else:
    device = jax.devices()[0].device_kind
    print(f"# device: {device} ({jax.default_backend()}), {jax.device_count()} device(s), jax {jax.__version__}")
    print("| case | impl | mode | shape | time | throughput |\n|---|---|---|---|---|---|")
    rows = run(args)
  if args.json:
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"device": device, "backend": jax.default_backend(), "rows": rows}, f, indent=1)
    os.replace(tmp, args.json)


if __name__ == "__main__":
  main()
