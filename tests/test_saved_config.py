"""saved_config: a workdir's config.json read back over the base config (an older run's keys mapped to
today's), and the one-line errors of a folder that is not a run or a config that is not one."""

import json

import pytest
from test_configs import _leaf_keys

from microverse_jax import files, saved_config
from microverse_jax.configs import microsim_tiny


def test_an_older_runs_saved_config_reads_onto_the_base(tmp_path):
  """A config.json saved before a key existed (or with the old `eval` section) reads today's keys."""
  old = json.loads(microsim_tiny.get_config().to_json_best_effort())
  old.pop("sample"), old.pop("evals"), old["data"].pop("frame_buckets"), old["optim"].pop("lr_scaling")
  old["eval"] = dict(every=600, num_batches=2, buckets=[100, 900], sample_every=2400, sample_steps=25, guidance=4.0)
  old["eval"].update(negative_prompt="", sampler="euler", fps=8, physics=16, prompts=["a cell"])
  (tmp_path / "config.json").write_text(json.dumps(old))
  files.mark(str(tmp_path), "run")
  c = saved_config.get_config(str(tmp_path))
  assert set(_leaf_keys(c)) == set(_leaf_keys(microsim_tiny.get_config()))
  assert (c.data.frame_buckets, c.optim.lr_scaling, c.sample.steps, c.sample.guidance) == ((), "none", 25, 4.0)
  assert (c.evals.loss.every, c.evals.loss.buckets, c.evals.samples.prompts) == (600, (100, 900), ("a cell",))
  assert (c.evals.samples.every, c.evals.physics.every, c.evals.physics.num_clips) == (2400, 2400, 16)


def test_merged_keeps_the_saved_values_and_the_bases_defaults_for_the_rest():
  saved = {"train": {"num_steps": 7}, "data": {"num_frames": 17, "frame_buckets": [5, 17]}}
  c = saved_config.merged(saved)
  assert (c.train.num_steps, c.data.num_frames, tuple(c.data.frame_buckets)) == (7, 17, (5, 17))
  base = saved_config.base()
  assert (c.train.seed, c.data.height, c.model.num_layers) == (base.train.seed, base.data.height, 30)
  assert c.evals.physics.every == base.evals.physics.every  # no `eval` section: today's evals untouched


def test_an_old_eval_section_maps_key_by_key_and_physics_follows_the_samples():
  saved = {"eval": {"sample_every": 500, "physics": 0, "sample_steps": 9, "cfg_cache": True, "gone_key": 1}}
  c = saved_config.merged(saved)
  assert (c.evals.samples.every, c.sample.steps, c.sample.cfg_cache) == (500, 9, True)
  assert c.evals.physics.every == 0  # physics=0: that run scored none
  assert "eval" in saved and "gone_key" not in c and "eval" not in c  # the caller's dict is left as it was
  assert set(saved_config.EVAL_KEYS) >= {"sample_steps", "every", "num_batches", "buckets", "prompts", "physics"}


def test_base_is_a_fresh_config_each_time():
  a = saved_config.base()
  a.train.num_steps = 12345
  assert saved_config.base().train.num_steps == 0


def test_a_folder_that_is_not_a_run_is_refused_naming_the_flag(tmp_path):
  files.mark(str(tmp_path), "checkpoint")
  with pytest.raises(OSError, match=f"--workdir={tmp_path}: a converted checkpoint, not a training run's workdir"):
    saved_config.get_config(str(tmp_path))
  with pytest.raises(OSError, match="no such folder"):
    saved_config.get_config(str(tmp_path / "missing"))


def test_a_run_without_or_with_a_broken_config_json_is_one_error_naming_the_file(tmp_path):
  files.mark(str(tmp_path), "run")
  path = tmp_path / "config.json"
  with pytest.raises(FileNotFoundError, match=f"{path}: no saved config"):
    saved_config.get_config(str(tmp_path))
  path.write_text('{"train": {"num_st')
  with pytest.raises(OSError, match=f"{path}: not a saved config, the JSON is cut short or broken"):
    saved_config.get_config(str(tmp_path))
  path.write_text("[1, 2]")
  with pytest.raises(OSError, match=rf"{path}: not a saved config \(a JSON list, not an object\)"):
    saved_config.get_config(str(tmp_path))
