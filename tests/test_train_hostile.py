"""The trainer on hostile runs: non-finite updates (never saved, or skipped and counted), a resume after
logged-but-unsaved steps, a second trainer on a busy workdir, SIGTERM (saved, exit 143), a resume that
changes the data's shape."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from train_helpers import tiny_config

from microverse_jax import checkpoint, plans, resume, sharding, train, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _saved_params(c, workdir, step):
  mesh = sharding.make_mesh(plans.resolve(c, jax.device_count()).mesh_shape)
  states = train_state.StateFactory(plans.resolve(c, jax.device_count()), mesh)
  with jax.set_mesh(mesh):
    return checkpoint.Checkpointer(workdir, async_save=False).restore(step, states.abstract()[0], None)


@pytest.mark.hostile
@pytest.mark.parametrize("checkpoint_every", [1, 3])
def test_a_non_finite_update_is_never_saved(synth_data_dir, tmp_path, checkpoint_every):
  """lr=inf: the loss of step 1 is finite (weights before the update) but the update is not. The
  check runs one step late (no host sync per step) and always before a save."""
  c = tiny_config(
    synth_data_dir,
    **{
      "optim.lr": float("inf"),
      "optim.grad_clip": 0.0,
      "optim.warmup_steps": 0,
      "train.checkpoint_every": checkpoint_every,
      "train.num_steps": 4,
      "optim.schedule": "constant",
    },
  )
  with pytest.raises(FloatingPointError, match="non-finite update at step 1"):
    train.train(c, str(tmp_path))
  assert not [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]


@pytest.mark.hostile
def test_non_finite_updates_can_be_skipped_and_counted(synth_data_dir, tmp_path):
  c = tiny_config(
    synth_data_dir,
    **{
      "optim.lr": float("inf"),
      "optim.grad_clip": 0.0,
      "optim.warmup_steps": 0,
      "train.num_steps": 3,
      "optim.schedule": "constant",
      "train.on_nonfinite": "skip",
    },
  )
  last = train.train(c, str(tmp_path))
  assert last["skipped_updates"] == 3
  state = _saved_params(c, str(tmp_path), 3)
  assert int(state["skipped"]) == 3
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state["params"]))


@pytest.mark.hostile
def test_metrics_after_a_resume_have_no_repeated_steps_and_no_bare_nan(synth_data_dir, tmp_path):
  c = tiny_config(synth_data_dir, **{"train.num_steps": 4, "train.checkpoint_every": 2})
  train.train(c, str(tmp_path))
  path = tmp_path / "metrics.jsonl"
  # As if the run died after logging step 3-4 but before checkpoint 4 landed: resume from 2.
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  writer = train.MetricWriter(str(tmp_path), resume_step=4)
  writer.write(4, {"physics/pass_rate": float("nan")})
  text = path.read_text()
  assert "NaN" not in text and json.loads(text.splitlines()[-1])["physics/pass_rate"] is None
  train.train(c, str(tmp_path))
  steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]
  assert steps == [1, 2, 3, 4]
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.hostile
def test_a_second_trainer_on_the_same_workdir_is_refused(synth_data_dir, tmp_path):
  lock = train.WorkdirLock(str(tmp_path))
  try:
    with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
      train.train(tiny_config(synth_data_dir), str(tmp_path))
  finally:
    lock.release()
  train.WorkdirLock(str(tmp_path)).release()  # released: free again


@pytest.mark.hostile
def test_sigterm_exits_143_after_saving_so_a_job_or_launcher_reruns_it(synth_data_dir, tmp_path):
  """A preempted run exited 0: a Kubernetes Job or `train && export` took it as finished."""
  workdir, log = tmp_path / "run", tmp_path / "train.log"
  cmd = [
    sys.executable,
    "-m",
    "microverse_jax.train",
    "--config=configs/microsim_tiny.py:test",
    f"--workdir={workdir}",
    f"--config.data.data_dir={synth_data_dir}",
    "--config.train.num_steps=1000",
    "--config.train.checkpoint_every=1000",
  ]
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while "step 2/1000" not in log.read_text() and time.time() < deadline:
    assert proc.poll() is None, log.read_text()[-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
  saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and 2 <= saved[0] < 1000 and "rerun the same command to resume" in log.read_text()
  done = subprocess.run(
    [*cmd[:-2], f"--config.train.num_steps={saved[0] + 1}"], cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0 and f"resumed from step {saved[0]}" in done.stdout, done.stdout[-3000:]


@pytest.mark.hostile
def test_sigterm_in_the_python_api_saves_returns_the_step_and_restores_the_handler(
  synth_data_dir, tmp_path, monkeypatch
):
  write = train.MetricWriter.write

  def preempted_after_step_one(self, step, metrics):
    write(self, step, metrics)
    os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.MetricWriter, "write", preempted_after_step_one)
  before = signal.getsignal(signal.SIGTERM)
  last = train.train(tiny_config(synth_data_dir, **{"train.num_steps": 4}), str(tmp_path))
  assert last["step"] == 1 and signal.getsignal(signal.SIGTERM) is before
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [1]


@pytest.mark.hostile
def test_a_resume_that_changes_the_data_shape_is_refused_naming_old_and_new(synth_data_dir, tmp_path):
  """Pending rows kept their old length bucket: 9 -> 29 frames failed on every rerun, a lower count left a
  row pending forever."""
  c = tiny_config(synth_data_dir, **{"train.num_steps": 2})
  train.train(c, str(tmp_path))
  changed = tiny_config(synth_data_dir, **{"train.num_steps": 4, "data.num_frames": 9, "data.batch_size": 2})
  with pytest.raises(ValueError) as refused:
    train.train(changed, str(tmp_path))
  message = str(refused.value)
  assert "data.num_frames 5 -> 9" in message and "data.batch_size 4 -> 2" in message and str(tmp_path) in message
  assert json.loads((tmp_path / "config.json").read_text())["data"]["num_frames"] == 5  # the run's own, kept
  resume.check_data_unchanged(tiny_config(synth_data_dir, **{"train.num_steps": 8}), str(tmp_path))  # steps may
