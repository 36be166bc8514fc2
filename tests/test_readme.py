"""The README's commands as a new user runs them (issue 25): read from README.md's code blocks, run in
subprocesses. The main job runs with `:test` appended to its config (seconds, not minutes) from a
fresh home, so the dataset is built on first use as it is on a new machine; then the README's sample
command reads the workdir it wrote. If the README changes a command, these tests follow it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import av

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def readme_commands() -> list[str]:
  """Every line of README.md's ```bash blocks, in order."""
  text = open(README, encoding="utf-8").read()
  return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def readme_command(prefix: str) -> list[str]:
  """The one README command line (the part after `&&`, if any) that starts with `prefix`, as argv."""
  parts = [part.strip() for line in readme_commands() for part in line.split("&&")]
  found = [part for part in parts if part.startswith(prefix)]
  assert len(found) == 1, (prefix, found)
  return shlex.split(found[0])


def _run(argv: list[str], cwd: str, home: str) -> subprocess.CompletedProcess:
  assert argv[0] == "python"
  env = {**os.environ, "HOME": home, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _flag(argv: list[str], name: str) -> str:
  return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def test_the_readme_main_job_and_its_sample_command_run(tmp_path):
  main_job = readme_command("python -m microverse_jax.train")
  workdir = _flag(main_job, "workdir")
  argv = [a + ":test" if a.startswith("--config=") else a for a in main_job]
  home = str(tmp_path / "home")  # a new user's: no dataset built yet
  os.makedirs(home)
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # the README's paths, from a checkout
  run = _run(argv, str(tmp_path), home)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "building microsim_synth" in run.stdout, run.stdout[-2000:]
  run_dir = tmp_path / workdir
  steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 4 and (run_dir / "config.json").exists() and os.listdir(run_dir / "checkpoints")

  sample = readme_command("python -m microverse_jax.sample")
  assert _flag(sample, "workdir") == workdir
  run = _run(sample, str(tmp_path), home)
  assert run.returncode == 0, run.stderr[-3000:]
  with av.open(str(tmp_path / _flag(sample, "out"))) as container:
    assert len(list(container.decode(container.streams.video[0]))) == 5  # the :test config's frames


def test_ci_installs_and_tests_as_the_readme_says():
  """.ci/run runs the README's install and test command lines verbatim, in a fresh venv."""
  ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
  install, test = [p.strip() for p in next(c for c in readme_commands() if "pytest" in c).split("&&")]
  assert install in ci and test in ci
  assert "python3 -m venv" in ci and "--system-site-packages" not in ci and "pip check" in ci
