"""The trainer on hostile runs: non-finite updates (never saved, or skipped and counted), a resume after
logged-but-unsaved steps, a second trainer on a busy workdir."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest
from train_helpers import tiny_config

from microverse_jax import checkpoint, factory as factory_lib, sharding, train


def _saved_params(c, workdir, step):
  mesh = sharding.make_mesh(factory_lib.validate(c, jax.device_count()))
  factory = factory_lib.StateFactory(c, mesh, sharding.DEFAULT_RULES)
  with jax.set_mesh(mesh):
    return checkpoint.Checkpointer(workdir, async_save=False).restore(step, factory.abstract()[0], None)


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
