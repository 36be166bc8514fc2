"""Runs every benchmark under bench/perf at cheap settings, one after another, from one entry.

Each runs as its own process (so XLA flags and thread settings stay per benchmark); the summary
lists each command, its exit status and wall time, and the log tail with its figures.

  python bench/perf/run_all.py                     # cheap CPU settings, all benchmarks
  python bench/perf/run_all.py --only=train_step,sampling --log_dir=/tmp/perf_logs
  python bench/perf/run_all.py --tiny              # smallest sizes: checks that each one runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (cheap arguments, tiny arguments)
BENCHMARKS = {
  "train_step": (["--sizes=base", "--repeats=3"], ["--sizes=tiny", "--repeats=1", "--no-peak"]),
  "scaling": (
    ["--frames=2,4,8", "--heads=4,6,8", "--repeats=2"],
    ["--size=tiny", "--frames=1,2", "--heads=1,2", "--repeats=1"],
  ),
  "sampling": (["--steps=4", "--repeats=2"], ["--size=tiny", "--steps=2", "--repeats=1"]),
  "attention": (
    [
      "--impls=xla",
      "--seq=1024",
      "--heads=6",
      "--head-dim=64",
      "--text-len=64",
      "--text-valid=40",
      "--dtype=float32",
      "--iters=3",
    ],
    [
      "--impls=xla",
      "--seq=64",
      "--heads=2",
      "--head-dim=16",
      "--text-len=8",
      "--text-valid=5",
      "--dtype=float32",
      "--warmup=1",
      "--iters=1",
    ],
  ),
  "data_pipeline": (["--clips=10", "--full_clips=2", "--workers=0"], ["--clips=2", "--full_clips=1", "--workers=0"]),
  "scorer": (
    ["--tasks=16", "--latency=0.2", "--concurrency=8", "--frames=9", "--height=64", "--width=64"],
    ["--tasks=2", "--latency=0.01", "--concurrency=2", "--frames=3", "--height=32", "--width=32"],
  ),
  "vae_memory": (["--height=64", "--width=64", "--frames", "17"], ["--height=32", "--width=32", "--frames", "5"]),
}


def run_one(name: str, args: list[str], log_dir: str, timeout: float) -> dict:
  cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *args]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    rc, out = proc.returncode, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, out = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
  seconds = time.perf_counter() - start
  log = os.path.join(log_dir, f"{name}.log")
  with tempfile.NamedTemporaryFile("w", dir=log_dir, delete=False) as f:
    f.write(" ".join(cmd) + "\n" + out)
  os.replace(f.name, log)
  return {
    "name": name,
    "command": " ".join(["python", os.path.relpath(cmd[1]), *args]),
    "rc": rc,
    "seconds": seconds,
    "log": log,
    "tail": [l for l in out.splitlines() if l.strip()][-4:],
  }


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", default="", help=f"comma-separated subset of {list(BENCHMARKS)}")
  p.add_argument("--tiny", action="store_true", help="smallest settings (a smoke run, figures meaningless)")
  p.add_argument("--log_dir", default="", help="per-benchmark logs (default: a temp folder)")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
  args = p.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown:
    raise ValueError(f"--only: unknown benchmarks {unknown}; expected names from {list(BENCHMARKS)}")
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="perf_")
  os.makedirs(log_dir, exist_ok=True)
  results = []
  for name in names:
    result = run_one(name, BENCHMARKS[name][1 if args.tiny else 0], log_dir, args.timeout)
    results.append(result)
    print(f"== {name}: rc={result['rc']} in {result['seconds']:.0f} s  ({result['command']})", flush=True)
    for line in result["tail"]:
      print(f"   {line}", flush=True)
  failed = [r["name"] for r in results if r["rc"] != 0]
  print(
    f"benchmarks: {len(results) - len(failed)} ran, {len(failed)} failed"
    + (f" {failed}" if failed else "")
    + f"; logs in {log_dir}"
  )
  if failed:
    sys.exit(1)
  return results


if __name__ == "__main__":
  main()
