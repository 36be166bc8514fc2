"""A module that is not installed is one line naming its pip package and the extra that brings it,
exit status 2, no traceback (`--verbose` keeps it): at import time, and lazily inside a command
(issue 25, item 4). A missing module is simulated by a package on PYTHONPATH that raises the same
ModuleNotFoundError Python raises for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from microverse_jax import dependencies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _without(tmp_path, module: str) -> str:
  """A PYTHONPATH entry under which `import module` fails as if it were not installed."""
  shadow = tmp_path / "shadow" / module
  shadow.mkdir(parents=True)
  (shadow / "__init__.py").write_text(
    f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n"
  )
  return str(tmp_path / "shadow")


def _run(args, pythonpath: str, tmp_path) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath, "HOME": str(tmp_path)}
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
  "module,says",
  [
    ("importlib_resources", "a dependency of microverse-jax: pip install -e ."),
    ("gcsfs", "from the extra microverse-jax[gcs] or microverse-jax[tpu]: pip install -e '.[tpu]'"),
    ("matplotlib", "microworldbench[plots]"),
    ("PIL.Image", "pip package 'pillow', a dependency of microverse-jax"),
    ("not_a_real_module", "not declared by microverse-jax or microworldbench: pip install not_a_real_module"),
  ],
)
def test_the_line_names_the_package_and_the_extra(module, says):
  line = dependencies.missing_module_line(ModuleNotFoundError(f"No module named {module!r}", name=module))
  assert says in line and "\n" not in line, line


def test_a_module_missing_when_the_command_is_imported_is_one_line(tmp_path):
  run = _run(["microverse_jax.train", "--help"], _without(tmp_path, "optax"), tmp_path)
  assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines() == [
    "error: missing module 'optax': pip package 'optax', a dependency of microverse-jax: pip install -e ."
  ]


def test_a_module_missing_inside_a_command_is_one_line_and_verbose_keeps_the_traceback(tmp_path):
  """TFDS imports importlib_resources lazily, when a dataset is built: the README's main job on a new machine."""
  shadow = _without(tmp_path, "importlib_resources")
  build = ["microverse_jax.build_dataset", "microsim_synth", f"--data_dir={tmp_path}/tfds", "--num_clips=2"]
  train = ["microverse_jax.train", "--config=configs/microsim_tiny.py:test", f"--workdir={tmp_path}/w"]
  for args in (build, train):
    run = _run(args, shadow, tmp_path)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert err[-1].startswith("error: missing module 'importlib_resources'") and len(err) == 1, err
  run = _run([*build, "--verbose"], shadow, tmp_path)
  assert run.returncode == 2 and "Traceback" in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith("error: missing module 'importlib_resources'")


def test_the_scorer_names_a_missing_module_in_one_line(tmp_path):
  run = _run(["microworldbench", "physics", "--help"], _without(tmp_path, "scipy"), tmp_path)
  assert run.returncode == 2 and run.stderr.strip().splitlines() == [
    "microworldbench physics: error: missing module 'scipy': pip install -e ./bench (-e './bench[plots]' for plots)"
  ], run.stderr[-3000:]
