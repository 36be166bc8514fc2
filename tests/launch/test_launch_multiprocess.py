"""Multi-host training on this machine: two JAX processes on 127.0.0.1 (4 simulated CPU devices each)
train the tiny config on one 8-device mesh and checkpoint; their losses equal one 8-device process
fed the same global batches."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, sharding
from microverse_jax.launch import local, shell

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 420
# Cheap compiles: both runs use the same flags, so they compile the same programs.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory) -> str:
  tfds.disable_progress_bar()
  data_dir = str(tmp_path_factory.mktemp("launch_synth"))
  build_dataset.build("microsim_synth", data_dir, num_clips=16, seed=0, num_frames=9, size=32)
  return data_dir


def _overrides(data_dir: str) -> list[str]:
  # 8 devices as data=4 x tensor=2: the batch and the attention heads are split across processes.
  return [
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.data=4",
    "--config.mesh.tensor=2",
    "--config.model.num_layers=1",
    "--config.train.num_steps=3",
    "--config.train.checkpoint_every=3",
  ]


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_two_processes_train_like_one(tiny_data_dir, tmp_path, monkeypatch):
  config = "configs/microsim_tiny.py:test"
  overrides = _overrides(tiny_data_dir)
  monkeypatch.setenv("XLA_FLAGS", FAST_XLA)
  monkeypatch.chdir(REPO)

  # The reference: one process with 8 devices, fed the concatenation of both processes' batches.
  ref_dir, ref_log = str(tmp_path / "single"), tmp_path / "single.log"
  reference = _start_reference(config, ref_dir, overrides, ref_log)
  try:
    # Two processes through the local launcher: coordinator on 127.0.0.1, one shared workdir.
    mp_dir, log_dir = str(tmp_path / "two"), str(tmp_path / "two_logs")
    printed = io.StringIO()
    train = shell.train_argv(config, mp_dir, overrides, python=sys.executable)
    local.run(
      train,
      shell.Runner(False, out=printed),
      num_processes=2,
      devices_per_process=4,
      log_dir=log_dir,
      timeout=TIMEOUT_S,
    )
    assert reference.wait(timeout=TIMEOUT_S) == 0, ref_log.read_text()[-3000:]
  finally:
    if reference.poll() is None:
      os.killpg(reference.pid, 9)
      reference.wait()

  assert "JAX_PROCESS_ID=0" in printed.getvalue() and "JAX_PROCESS_ID=1" in printed.getvalue()
  for i in range(2):  # every process saw the whole 8-device mesh
    log = open(os.path.join(log_dir, f"process-{i}.log")).read()
    assert "over 8 devices" in log, log[-3000:]

  two, one = _metrics(mp_dir), _metrics(ref_dir)
  assert [m["step"] for m in two] == [1, 2, 3]  # written once per step: by process 0 only
  np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-5)
  np.testing.assert_allclose([m["grad_norm"] for m in two], [m["grad_norm"] for m in one], rtol=1e-4)
  assert all(np.isfinite(m["loss"]) for m in two)

  # One collective Orbax checkpoint at step 3, with each process's data-iterator state.
  step_dir = os.path.join(mp_dir, "checkpoints", "3")
  assert sorted(os.listdir(os.path.join(mp_dir, "checkpoints"))) == ["3"]
  assert os.path.isdir(os.path.join(step_dir, "state"))
  data_files = set(os.listdir(os.path.join(step_dir, "data")))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files, data_files


def _start_reference(config, workdir, overrides, log_path):
  env = {
    **os.environ,
    **local.process_env(0, 1, devices=8, port=None),
    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  }
  with open(log_path, "w") as out:
    return subprocess.Popen(
      [
        sys.executable,
        os.path.join(REPO, "tests", "launch", "emulated_processes.py"),
        "--emulated_processes=2",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
      ],
      env=env,
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )


@pytest.mark.heavy
def test_two_processes_resume_from_their_collective_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
  """2 steps, stop, resume to 3 on two processes (each restores its own data-iterator state)."""
  config, overrides = "configs/microsim_tiny.py:test", _overrides(tiny_data_dir)
  monkeypatch.setenv("XLA_FLAGS", FAST_XLA)
  monkeypatch.chdir(REPO)
  reference = _start_reference(config, str(tmp_path / "single"), overrides, tmp_path / "single.log")
  try:
    mp_dir = str(tmp_path / "two")
    for steps in (2, 3):
      train = shell.train_argv(
        config,
        mp_dir,
        [*overrides, f"--config.train.num_steps={steps}", "--config.train.checkpoint_every=2"],
        python=sys.executable,
      )
      local.run(
        train,
        shell.Runner(False, out=io.StringIO()),
        num_processes=2,
        devices_per_process=4,
        log_dir=str(tmp_path / f"logs{steps}"),
        timeout=TIMEOUT_S,
      )
    assert reference.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "single.log").read_text()[-3000:]
  finally:
    if reference.poll() is None:
      os.killpg(reference.pid, 9)
      reference.wait()
  assert "resumed from step 2" in open(tmp_path / "logs3" / "process-1.log").read()
  two, one = _metrics(mp_dir), _metrics(str(tmp_path / "single"))
  assert [m["step"] for m in two] == [1, 2, 3]
  np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-5)


def test_local_launcher_stops_all_processes_when_one_fails(tmp_path):
  """A process that dies must not leave the others waiting at a collective until the timeout."""
  script = "import os, sys, time\nsys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)\n"
  with pytest.raises(RuntimeError, match="process 1 exited with 3"):
    local.run(
      [sys.executable, "-c", script],
      shell.Runner(False, out=io.StringIO()),
      num_processes=2,
      log_dir=str(tmp_path),
      timeout=30,
    )


def test_local_launcher_times_out(tmp_path):
  with pytest.raises(TimeoutError, match="still running"):
    local.run(
      [sys.executable, "-c", "import time; time.sleep(60)"],
      shell.Runner(False, out=io.StringIO()),
      num_processes=2,
      log_dir=str(tmp_path),
      timeout=1,
    )


def test_process_env_for_a_local_multi_process_run(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp/x")
  env = local.process_env(1, 2, devices=4, port=1234)
  assert env == {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4",
    "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
    "JAX_NUM_PROCESSES": "2",
    "JAX_PROCESS_ID": "1",
  }
  assert "JAX_COORDINATOR_ADDRESS" not in local.process_env(0, 1, devices=None, port=None)


def test_maybe_initialize_distributed_reads_explicit_env(monkeypatch):
  for var in (
    "MEGASCALE_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "SLURM_NTASKS",
    "MICROVERSE_DISTRIBUTED",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
  ):
    monkeypatch.delenv(var, raising=False)
  sharding.maybe_initialize_distributed()  # no trigger: a single process, nothing initialised
  assert not jax.distributed.is_initialized()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    sharding.maybe_initialize_distributed()
  assert not jax.distributed.is_initialized()
