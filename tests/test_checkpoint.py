"""checkpoint: Orbax save and restore of a small train state and a Grain iterator, the newest `keep` steps, a
damaged step set aside for the one before, and one error naming the first difference of another config's state."""

import json
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microverse_jax import checkpoint


def _state(scale=1.0):
  return {
    "step": jnp.asarray(3, jnp.int32),
    "params": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * scale, "b": jnp.ones((3,), jnp.bfloat16)},
  }


def _data():
  return iter(grain.MapDataset.range(10).to_iter_dataset())


def test_save_and_restore_round_trip_the_state_and_the_data_iterator(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.latest_step() is None and ckpt.directory == tmp_path / "checkpoints"
  data = _data()
  assert [next(data) for _ in range(3)] == [0, 1, 2]
  assert ckpt.save(3, _state(), data)
  ckpt.close()
  fresh = _data()
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.latest_step() == 3
  restored = ckpt.restore(3, checkpoint.abstract_like(_state(scale=0.0)), fresh)
  assert next(fresh) == 3  # the iterator resumes where the saved one stood
  for want, got in zip(jax.tree.leaves(_state()), jax.tree.leaves(restored)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert checkpoint.stored_shapes(ckpt.directory / "3" / "state") == {"step": (), "params.w": (2, 3), "params.b": (3,)}
  ckpt.close()


def test_only_the_newest_keep_steps_are_kept(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), None)
  ckpt.wait()
  assert ckpt.latest_step() == 3 and sorted(ckpt.manager.all_steps()) == [2, 3]
  restored = ckpt.restore(2, checkpoint.abstract_like(_state()), None)
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(_state(2)["params"]["w"]))
  ckpt.close()


def test_a_damaged_step_is_set_aside_and_the_one_before_restored(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, _state(1), None)
  ckpt.save(2, _state(2), None)
  shutil.rmtree(ckpt.directory / "2" / "state")
  restored = ckpt.restore(2, checkpoint.abstract_like(_state()), None)
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(_state(1)["params"]["w"]))
  out = capsys.readouterr().out
  assert f"checkpoint step 2 in {ckpt.directory} cannot be read" in out and "trying the step before" in out
  aside = [p.name for p in ckpt.directory.iterdir() if p.name.startswith("2.incomplete-")]
  assert len(aside) == 1 and ckpt.latest_step() == 1
  shutil.rmtree(ckpt.directory / "1" / "state")
  with pytest.raises(FileNotFoundError, match="no readable checkpoint at or before step 2"):
    ckpt.restore(2, checkpoint.abstract_like(_state()), None)
  ckpt.close()


def test_a_state_of_another_config_is_one_error_naming_the_first_difference(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, _state(), None)
  other = _state()
  other["params"]["w"] = jnp.zeros((2, 4))
  with pytest.raises(ValueError) as e:
    ckpt.restore(1, checkpoint.abstract_like(other), None)
  assert str(e.value) == (
    f"{tmp_path}: the config does not fit checkpoint step 1: params.w is (2, 3) in the checkpoint, (2, 4) in the "
    "config; resume with the run's own config, or use a new workdir"
  )
  ckpt.close()


def test_check_fits_lists_shapes_then_missing_then_unexpected_params_first():
  saved = {"step": (), "opt.mu.w": (2,), "params.w": (2,), "params.gone": (1,)}
  want = {"step": jnp.zeros(()), "opt": {"mu": {"w": jnp.zeros(3)}}, "params": {"w": jnp.zeros(3), "new": jnp.zeros(1)}}
  first = r"^here: params.w is \(2,\) in the checkpoint, \(3,\) in the config \(and 3 more differences\);"
  with pytest.raises(ValueError, match=first):
    checkpoint.check_fits(saved, want, "here")
  with pytest.raises(ValueError, match=r"^here: params.new is not saved;"):
    checkpoint.check_fits({"params.w": (3,)}, {"params": {"w": jnp.zeros(3), "new": jnp.zeros(1)}}, "here")
  with pytest.raises(ValueError, match=r"^here: params.gone is saved but not in the config;"):
    checkpoint.check_fits({"params.w": (3,), "params.gone": (1,)}, {"params": {"w": jnp.zeros(3)}}, "here")
  checkpoint.check_fits({"params.w": (3,)}, {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}}, "here")


def test_unreadable_knows_missing_or_damaged_files_through_the_chain():
  assert checkpoint.unreadable(FileNotFoundError("x")) and checkpoint.unreadable(json.JSONDecodeError("x", "", 0))
  assert checkpoint.unreadable(Exception("DATA_LOSS: truncated chunk")) and checkpoint.unreadable(
    ValueError("The checkpoint path /x does not exist.")
  )
  try:
    try:
      raise NotADirectoryError("state")
    except NotADirectoryError as inner:
      raise RuntimeError("restore failed") from inner
  except RuntimeError as outer:
    assert checkpoint.unreadable(outer)
  assert not checkpoint.unreadable(MemoryError("RESOURCE_EXHAUSTED: out of memory"))
  assert not checkpoint.unreadable(ValueError("a shape mismatch"))


def test_reason_is_the_innermost_message_on_one_short_line():
  try:
    try:
      raise OSError("first line\n   second   line")
    except OSError as inner:
      raise RuntimeError("outer") from inner
  except RuntimeError as outer:
    assert checkpoint.reason(outer) == "OSError: first line second line"
  assert checkpoint.reason(ValueError("x" * 300), limit=10) == "ValueError: xxxxxxxxxx..."


def test_abstract_like_keeps_shape_dtype_and_sharding():
  tree = _state()
  abstract = checkpoint.abstract_like(tree)
  for x, a in zip(jax.tree.leaves(tree), jax.tree.leaves(abstract)):
    assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
