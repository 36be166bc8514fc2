"""Sampling: deterministic videos from a tiny trained checkpoint, task lists, resume, clear errors."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from configs import microsim_tiny
from microverse_jax import sample, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(synth_data_dir, tmp_path_factory):
  """A two-step tiny checkpoint and its config."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  c = microsim_tiny.get_config("test")
  c.data.data_dir = synth_data_dir
  c.train.update(num_steps=2, checkpoint_every=2)
  train.train(c, workdir)
  return c, workdir


def test_same_seed_same_video_and_valid_mp4(trained, tmp_path):
  c, workdir = trained
  model = sample.load_model(c, workdir, None)
  tokenizer, encoders = train.build_encoders(c)
  kwargs = dict(steps=3, guidance=4.0, shift=1.0, sampler="unipc", seed=7)
  shape = train.latent_shape(c)
  a = sample.generate(model, encoders, tokenizer, ["cells divide", "beads diffuse"], shape, **kwargs)
  b = sample.generate(model, encoders, tokenizer, ["cells divide", "beads diffuse"], shape, batch_size=1,
                      **kwargs)
  assert len(a) == 2 and a[0].shape == (5, 16, 16, 3) and a[0].dtype == np.uint8
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], a[1])
  path = tmp_path / "out.mp4"
  sample.write_video(a[0], str(path), fps=8, strip=True)
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert float(stream.average_rate) == 8
  assert len(frames) == 5 and frames[0].shape == (16, 16, 3)
  assert (tmp_path / "out.png").exists() and not list(tmp_path.glob(".*.tmp"))


def test_guidance_one_skips_the_unconditional_pass_with_the_same_result(trained):
  c, workdir = trained
  model = sample.load_model(c, workdir, None)
  tokenizer, encoders = train.build_encoders(c)
  kwargs = dict(steps=3, shift=1.0, sampler="euler", seed=3)
  args = (model, encoders, tokenizer, ["cells divide"], train.latent_shape(c))
  alone = sample.generate(*args, guidance=1.0, **kwargs)[0]
  with_uncond = sample.generate(*args, guidance=1.0 + 1e-6, **kwargs)[0]  # the CFG path, same maths
  assert np.abs(alone.astype(int) - with_uncond.astype(int)).max() <= 1


def _run(args, **kw):
  cmd = [sys.executable, "-m", "microverse_jax.sample", "--config=configs/microsim_tiny.py:test",
         "--steps=2", "--shift=1.0", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def test_tasks_write_resume_and_feed_the_scorer(trained, synth_data_dir, tmp_path):
  _, workdir = trained
  tasks = tmp_path / "tasks.json"
  tasks.write_text(json.dumps([{"index": i, "task": f"task {i}: a cell divides", "requirement": ""}
                               for i in (1, 2, 3)]))
  out = tmp_path / "videos"
  common = [f"--workdir={workdir}", f"--config.data.data_dir={synth_data_dir}", f"--tasks={tasks}",
            f"--out_dir={out}"]
  first = _run([*common, "--indices=1-2"])
  assert first.returncode == 0, first.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["1.mp4", "2.mp4"]
  # An interruption leaves only a temporary file behind; a rerun skips finished videos.
  kept = os.path.getmtime(out / "1.mp4")
  os.remove(out / "2.mp4")
  (out / ".2.mp4.tmp").write_bytes(b"partial")
  second = _run(common)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "2 videos to generate" in second.stdout
  assert sorted(p for p in os.listdir(out) if p.endswith(".mp4")) == ["1.mp4", "2.mp4", "3.mp4"]
  assert os.path.getmtime(out / "1.mp4") == kept
  from microworldbench import frames
  assert frames.read_frames(str(out / "3.mp4"), 4).shape == (4, 16, 16, 3)


def test_bad_input_is_named(trained, tmp_path):
  c, _ = trained
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    sample.load_model(c, str(tmp_path), None)
  with pytest.raises(ValueError, match=r"tasks \[7\] are not in the task file"):
    sample.parse_indices("1-2,7", [1, 2, 3])
  from configs import wan2_1
  wan = wan2_1.get_config("1.3b,lora")
  with pytest.raises(ValueError, match="4k \\+ 1"):
    train.latent_shape(wan, 80)
  assert train.latent_shape(wan) == (21, 60, 104, 16)
