"""resume: SIGTERM sets a flag (and the handler before it comes back), and a resume that would change the
data's shape is refused naming each key, old and new."""

import json
import os
import signal
import threading

import pytest
from train_helpers import tiny_config

from microverse_jax import resume


def test_exit_preempted_is_the_status_of_a_process_sigterm_killed():
  assert resume.EXIT_PREEMPTED == 143 == 128 + signal.SIGTERM


def test_sigterm_sets_the_flag_and_the_previous_handler_comes_back():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("outer"))
  try:
    with resume.SigtermFlag() as sigterm:
      assert not sigterm.raised
      os.kill(os.getpid(), signal.SIGTERM)  # handled synchronously on the main thread, before kill returns
      assert sigterm.raised and seen == []  # this process is still alive, the outer handler untouched
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ["outer"]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_no_handler_is_installed():
  before = signal.getsignal(signal.SIGTERM)
  out = {}

  def run():
    with resume.SigtermFlag() as sigterm:  # Python takes signal handlers on the main thread only
      out["handler"], out["raised"] = signal.getsignal(signal.SIGTERM), sigterm.raised

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert out == {"handler": before, "raised": False} and signal.getsignal(signal.SIGTERM) is before


def _workdir(path, c, steps=(2,)):
  """A workdir as the trainer leaves it: config.json and checkpoints/<step>/."""
  (path / "config.json").write_text(c.to_json_best_effort())
  for step in steps:
    (path / "checkpoints" / str(step)).mkdir(parents=True)
  return str(path)


def test_a_resume_of_another_data_shape_names_each_key_old_and_new(tmp_path):
  workdir = _workdir(tmp_path, tiny_config("/data"))
  other = tiny_config("/data", **{"data.num_frames": 9, "data.batch_size": 8, "data.frame_buckets": (5, 9)})
  with pytest.raises(ValueError) as e:
    resume.check_data_unchanged(other, workdir)
  message = str(e.value)
  assert message.startswith(f"--workdir={workdir} resumes a run of another data shape: ")
  assert "data.num_frames 5 -> 9, data.batch_size 4 -> 8, data.frame_buckets () -> (5, 9)." in message
  assert os.path.join(workdir, "config.json") in message and "data.height" not in message


def test_what_a_resume_may_change(tmp_path):
  workdir = _workdir(tmp_path, tiny_config("/data", **{"data.frame_buckets": (5,)}))  # saved as a JSON list
  same = tiny_config("/elsewhere", **{"data.frame_buckets": (5,), "train.num_steps": 99, "optim.lr": 0.5})
  resume.check_data_unchanged(same, workdir)  # data_dir, steps, lr: not the iterator's shape


@pytest.mark.parametrize("steps", [(), ("2.incomplete-abc123",)])
def test_a_workdir_without_a_checkpoint_is_no_resume(tmp_path, steps):
  workdir = _workdir(tmp_path, tiny_config("/data"), steps)
  if not steps:
    (tmp_path / "checkpoints").mkdir()
  resume.check_data_unchanged(tiny_config("/data", **{"data.num_frames": 9}), workdir)
  resume.check_data_unchanged(tiny_config("/data"), str(tmp_path / "new"))  # no workdir yet


def test_an_older_runs_config_without_frame_buckets_resumes(tmp_path):
  saved = json.loads(tiny_config("/data").to_json_best_effort())
  del saved["data"]["frame_buckets"]  # saved before the key existed: the base's default ()
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  resume.check_data_unchanged(tiny_config("/data"), str(tmp_path))
  with pytest.raises(ValueError, match=r"data.frame_buckets \(\) -> \(5,\)"):
    resume.check_data_unchanged(tiny_config("/data", **{"data.frame_buckets": (5,)}), str(tmp_path))


def test_a_broken_saved_config_is_named_and_a_non_config_is_not_checked(tmp_path):
  workdir = _workdir(tmp_path, tiny_config("/data"))
  (tmp_path / "config.json").write_text('{"data": {"num_fr')
  with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}: this run's saved config is broken JSON"):
    resume.check_data_unchanged(tiny_config("/data"), workdir)
  (tmp_path / "config.json").write_text("[1, 2]")
  resume.check_data_unchanged(tiny_config("/data"), workdir)
