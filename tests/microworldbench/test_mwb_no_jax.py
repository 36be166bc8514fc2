"""The scorer package must import (and run its CLI help) without JAX."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib

BLOCK_JAX = """
import importlib.abc, sys
class _NoJax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "jax" or name.startswith(("jax.", "jaxlib", "flax")):
      raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, _NoJax())
import microworldbench, microworldbench.cli
from microworldbench import (aggregate, agreement, evaluate, files, frames, judge, official, progress, report, results,
                             rubrics)
assert not [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax")], "jax was imported"
sys.argv = ["microworldbench", "--help"]
try:
  microworldbench.cli.main()
except SystemExit as e:
  assert e.code == 0
"""


def test_import_does_not_need_or_load_jax():
  proc = subprocess.run(
    [sys.executable, "-c", BLOCK_JAX], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH="")
  )
  assert proc.returncode == 0, proc.stderr
  assert "evaluate" in proc.stdout and "aggregate" in proc.stdout and "agreement" in proc.stdout


def test_distribution_does_not_depend_on_jax():
  root = pathlib.Path(__file__).resolve().parents[2]
  meta = tomllib.loads((root / "bench" / "pyproject.toml").read_text())["project"]
  deps = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
  assert not [d for d in deps if d.lower().startswith(("jax", "flax", "torch"))]
  assert meta["scripts"]["microworldbench"] == "microworldbench.cli:main"
