"""The throughput benchmark runs end to end at a tiny size (its figure goes to BENCHMARKS.md)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys


def test_scorer_benchmark_runs_tiny():
  script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "perf" / "scorer.py"
  proc = subprocess.run(
    [
      sys.executable,
      str(script),
      "--tasks",
      "4",
      "--latency",
      "0.05",
      "--concurrency",
      "4",
      "--frames",
      "9",
      "--height",
      "32",
      "--width",
      "48",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert "calls 12 (scored 12, failed 0)" in proc.stdout
  ratio = float(re.search(r"ratio ideal/achieved ([0-9.]+)", proc.stdout).group(1))
  assert 0.0 < ratio <= 1.05
