"""Training-step time and peak memory of our WanDiT against frames (tokens) and model width.

Starts from a size of train_step.py (default "base": 6 layers, 6 heads x 64, latents 5x16x16) and
sweeps the latent frame count (tokens T = F x H/2 x W/2) and the head count (width E = 64 N) one at
a time. Peak memory is XLA's compiled memory analysis of the step (arguments + outputs + temporaries
- aliased), the same figure `python -m microverse_jax.aot` reports for TPUs. The fitted exponent is
the least-squares slope of log(time) and log(memory) against log(T) or log(E).

  python bench/perf/scaling.py                                  # table + PNG in /tmp/scaling
  python bench/perf/scaling.py --frames=2,4,8,16 --heads=4,6,8,12 --out=/tmp/scaling
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import train_step  # noqa: E402  (pins BENCH_THREADS cores before the CPU backend starts)

from microverse_jax import flops  # noqa: E402


def measure(size: str, repeats: int, **overrides) -> dict:
  """One point: median step time, compiled peak bytes and model FLOPs of `size` with overrides.

  `frames` in overrides replaces the latent frame count; the rest are WanDiTConfig fields.
  """
  frames = overrides.pop("frames", None)
  cfg, fhw, text_len, batch = train_step.model_config(size, **overrides)
  if frames:
    fhw = (frames, *fhw[1:])
  run, compiled = train_step.make_ours(cfg, fhw, text_len, batch, return_compiled=True)
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  run()  # warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  tokens = int(np.prod([s // p for s, p in zip(fhw, cfg.patch_size)]))
  return {
    "frames": fhw[0],
    "tokens": tokens,
    "dim": cfg.dim,
    "step_s": statistics.median(times),
    "peak_bytes": int(peak),
    "model_gflop": flops.train_step_flops(cfg, batch, fhw, text_len) / 1e9,
  }


def fit_exponent(x, y) -> float:
  """Slope of log y against log x (least squares)."""
  return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def sweep(size: str, frames: list[int], heads: list[int], repeats: int) -> dict:
  rows = {
    "frames": [measure(size, repeats, frames=f) for f in frames],
    "width": [measure(size, repeats, num_heads=n) for n in heads],
  }
  fits = {}
  for axis, key in (("frames", "tokens"), ("width", "dim")):
    xs = [r[key] for r in rows[axis]]
    fits[axis] = {
      "time": fit_exponent(xs, [r["step_s"] for r in rows[axis]]),
      "memory": fit_exponent(xs, [r["peak_bytes"] for r in rows[axis]]),
      "flops": fit_exponent(xs, [r["model_gflop"] for r in rows[axis]]),
    }
  return {"size": size, "rows": rows, "exponents": fits}


def table(result: dict) -> str:
  lines = []
  for axis, key in (("frames", "tokens"), ("width", "dim")):
    fit = result["exponents"][axis]
    lines.append(f"| {axis} sweep: {key} | step (s) | peak memory (MiB) | model GFLOP | GFLOP/s |")
    lines.append("|---|---|---|---|---|")
    for r in result["rows"][axis]:
      lines.append(
        f"| {r[key]} | {r['step_s']:.3f} | {r['peak_bytes'] / 2**20:.0f} | "
        f"{r['model_gflop']:.1f} | {r['model_gflop'] / r['step_s']:.1f} |"
      )
    lines.append(f"| fitted exponent | {fit['time']:.2f} | {fit['memory']:.2f} | {fit['flops']:.2f} | |")
    lines.append("")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, (axis, key, label) in zip(axes, (("frames", "tokens", "video tokens T"), ("width", "dim", "model width E"))):
    rows, fit = result["rows"][axis], result["exponents"][axis]
    xs = [r[key] for r in rows]
    ax.loglog(xs, [r["step_s"] for r in rows], "o-", label=f"step time (s), slope {fit['time']:.2f}")
    ax.loglog(xs, [r["peak_bytes"] / 2**30 for r in rows], "s--", label=f"peak memory (GiB), slope {fit['memory']:.2f}")
    ax.set_xlabel(label)
    ax.set_title(f"training step vs {label}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
  fig.suptitle(f"WanDiT training step scaling from size {result['size']!r} ({jax.default_backend()}, fp32)")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="base", help=f"starting size, from {sorted(train_step.SIZES)}")
  p.add_argument("--frames", default="2,4,8,16", help="latent frame counts")
  p.add_argument("--heads", default="4,6,8,12", help="head counts (head dim fixed)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="/tmp/scaling", help="folder for scaling.json, scaling.md, scaling.png")
  args = p.parse_args(argv)
  ints = lambda s: [int(x) for x in s.split(",") if x]
  result = sweep(args.size, ints(args.frames), ints(args.heads), args.repeats)
  os.makedirs(args.out, exist_ok=True)
  text = table(result)
  for name, content in (("scaling.json", json.dumps(result, indent=1)), ("scaling.md", text)):
    with tempfile.NamedTemporaryFile("w", dir=args.out, delete=False) as f:
      f.write(content)
    os.replace(f.name, os.path.join(args.out, name))
  plot(result, os.path.join(args.out, "scaling.png"))
  print(text)
  print(f"wrote {args.out}/scaling.md, scaling.json, scaling.png")
  return result


if __name__ == "__main__":
  main()
