"""build_dataset: the command line, the argument errors, a tiny microsim_synth built and refused with other
settings, `ensure_offline` building the offline dataset once, and the progress line."""

import contextlib
import io
import json

import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, input_pipeline

TINY = dict(num_clips=4, num_frames=5, size=16, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(data_dir, the summary it printed) of a 4-clip microsim_synth built by the command."""
  data_dir, out = str(tmp_path_factory.mktemp("synth")), io.StringIO()
  with contextlib.redirect_stdout(out):
    build_dataset.main(["microsim_synth", f"--out={data_dir}", *(f"--{k}={v}" for k, v in TINY.items())])
  return data_dir, json.loads(out.getvalue().strip().splitlines()[-1])


def test_the_command_builds_and_prints_its_splits(built):
  data_dir, summary = built  # --out is --data_dir
  assert summary["path"] == f"{data_dir}/microsim_synth/1.0.0" and "skipped" not in summary
  assert sum(summary["splits"].values()) == 4 and set(summary["splits"]) == {"train", "validation"}
  source = input_pipeline.load_source("microsim_synth", "train", data_dir)
  assert len(source) == summary["splits"]["train"]
  info = tfds.builder_from_directory(summary["path"]).info
  assert {k: info.metadata["build_settings"][k] for k in TINY} == TINY


def test_the_same_settings_reuse_the_build_and_others_are_refused(built):
  data_dir, _ = built
  path = build_dataset.build("microsim_synth", data_dir, **TINY)  # reused, not rebuilt
  assert str(path) == f"{data_dir}/microsim_synth/1.0.0"
  with pytest.raises(ValueError, match=r"holds microsim_synth built with \{.*'num_clips': 4.*pass --overwrite"):
    build_dataset.build("microsim_synth", data_dir, **{**TINY, "num_clips": 6})


@pytest.mark.parametrize("manual_dir", [None, "/no/such/release"])
def test_microsim10k_needs_an_existing_manual_dir(tmp_path, manual_dir):
  with pytest.raises(ValueError, match=f"microsim10k needs --manual_dir.*; got {manual_dir!r}"):
    build_dataset.build("microsim10k", str(tmp_path), manual_dir=manual_dir)
  assert list(tmp_path.iterdir()) == []


def test_an_unknown_dataset_is_refused_naming_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; expected one of \('microsim10k', 'microsim_synth'\)"):
    build_dataset.build("mnist", str(tmp_path))
  with pytest.raises(SystemExit):  # the command line refuses it before anything runs
    build_dataset.parser().parse_args(["mnist", f"--data_dir={tmp_path}"])
  with pytest.raises(SystemExit):  # --data_dir is required
    build_dataset.parser().parse_args(["microsim_synth"])


def test_ensure_offline_builds_microsim_synth_once_and_nothing_else(tmp_path, monkeypatch, capsys):
  real, calls = build_dataset.build, []

  def small_build(name, data_dir, **kwargs):  # the default build (320 clips) at the tiny size
    calls.append(name)
    return real(name, data_dir, **TINY)

  monkeypatch.setattr(build_dataset, "build", small_build)
  build_dataset.ensure_offline("microsim10k", str(tmp_path / "a"))  # a dataset to download: never built here
  assert calls == [] and not (tmp_path / "a").exists()
  build_dataset.ensure_offline("microsim_synth", str(tmp_path / "b"))
  assert calls == ["microsim_synth"] and f"building microsim_synth in {tmp_path / 'b'}" in capsys.readouterr().out
  assert len(input_pipeline.load_source("microsim_synth", "train", str(tmp_path / "b"))) > 0
  build_dataset.ensure_offline("microsim_synth", str(tmp_path / "b"))  # present: not built again
  assert calls == ["microsim_synth"]


def test_progress_lines_say_done_total_rate_and_eta():
  progress = build_dataset.Progress("build x", tty=False)
  progress.total, progress.done = 2400, 50
  assert progress.line(10.0) == "build x 50/2400 (2%) 5/s ETA 7m50s"
  progress.done = 1
  assert progress.line(10.0) == "build x 1/2400 (0%) 0.1/s ETA 6h39m"
  assert progress.line(0.0).endswith("0/s ETA ?")


def test_progress_prints_every_interval_and_at_the_end():
  out = io.StringIO()
  progress = build_dataset.Progress("clips", every_s=3600.0, tty=False, stream=out)
  progress.start(3)
  progress.update()
  progress.update()
  assert out.getvalue() == ""  # within the interval: quiet
  progress.update()
  assert out.getvalue().startswith("clips 3/3 (100%) ") and out.getvalue().count("\n") == 1
  progress.close()
