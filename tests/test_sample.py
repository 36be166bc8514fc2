"""Sampling: deterministic videos from a tiny trained checkpoint, task lists, resume, clear errors."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from microverse_jax import pipeline, plans, sample, train, train_state
from microverse_jax.configs import microsim_tiny

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
  pipe = pipeline.Pipeline.from_workdir(workdir)
  model, tokenizer, encoders = pipe.model, pipe.tokenizer, pipe.encoders
  kwargs = dict(steps=3, guidance=4.0, shift=1.0, sampler="unipc", seed=7)
  shape = plans.resolve(c, 1).latent_shape
  a = pipeline.generate(model, encoders, tokenizer, ["cells divide", "beads diffuse"], shape, **kwargs)
  b = pipeline.generate(model, encoders, tokenizer, ["cells divide", "beads diffuse"], shape, batch_size=1, **kwargs)
  assert len(a) == 2 and a[0].shape == (5, 16, 16, 3) and a[0].dtype == np.uint8
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], a[1])
  path = tmp_path / "out.mp4"
  pipeline.save_video(a[0], str(path), fps=8, strip=True)
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert float(stream.average_rate) == 8
  assert len(frames) == 5 and frames[0].shape == (16, 16, 3)
  assert (tmp_path / "out.png").exists() and not list(tmp_path.glob(".*.tmp"))


def test_guidance_one_skips_the_unconditional_pass_with_the_same_result(trained):
  c, workdir = trained
  pipe = pipeline.Pipeline.from_workdir(workdir)
  model, tokenizer, encoders = pipe.model, pipe.tokenizer, pipe.encoders
  kwargs = dict(steps=3, shift=1.0, sampler="euler", seed=3)
  args = (model, encoders, tokenizer, ["cells divide"], plans.resolve(c, 1).latent_shape)
  alone = pipeline.generate(*args, guidance=1.0, **kwargs)[0]
  with_uncond = pipeline.generate(*args, guidance=1.0 + 1e-6, **kwargs)[0]  # the CFG path, same maths
  assert np.abs(alone.astype(int) - with_uncond.astype(int)).max() <= 1


def _run(args, **kw):
  cmd = [sys.executable, "-m", "microverse_jax.sample", "--steps=2", "--shift=1.0", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def test_tasks_write_resume_and_feed_the_scorer(trained, synth_data_dir, tmp_path):
  _, workdir = trained
  tasks = tmp_path / "tasks.json"
  tasks.write_text(
    json.dumps([{"index": i, "task": f"task {i}: a cell divides", "requirement": ""} for i in (1, 2, 3)])
  )
  out = tmp_path / "videos"
  common = [f"--workdir={workdir}", f"--rubrics={tasks}", f"--out={out}"]
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
    train_state.load_dit(plans.resolve(c, 1), workdir=str(tmp_path))
  with pytest.raises(ValueError, match=r"tasks \[7\] are not in the task file"):
    sample.parse_indices("1-2,7", [1, 2, 3])
  from microverse_jax.configs import wan2_1

  wan = wan2_1.get_config("1.3b,lora")
  with pytest.raises(ValueError, match="4k \\+ 1"):
    plans.resolve(wan, 8).latent_shape_of(80)
  assert plans.resolve(wan, 8).latent_shape == (21, 60, 104, 16)


def test_the_workdir_describes_itself_and_overrides_apply(trained, tmp_path):
  """No --config: the saved config.json is used; --config.key=value still overrides it."""
  _, workdir = trained
  out = tmp_path / "one.mp4"
  run = _run([f"--workdir={workdir}", "--prompt=cells divide", f"--out={out}", "--config.sample.fps=4"])
  assert run.returncode == 0, run.stderr[-2000:]
  with av.open(str(out)) as container:
    assert float(container.streams.video[0].average_rate) == 4
  bad = _run([f"--workdir={workdir}", "--prompt=x", f"--out={out}", "--config.sample.fpz=4"])
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) <= 2, bad.stderr
  assert "--config.sample.fpz" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
  "rows,match",
  [
    ([{"id": "../x", "caption": "a"}], r"'\.\./x'"),
    ([{"id": "/abs/x", "caption": "a"}], r"'/abs/x'"),
    ([{"id": ".hidden", "caption": "a"}], r"'\.hidden'"),
    ([{"id": "a", "caption": "a"}, {"id": "a", "caption": "b"}], r"row 2: 'a' \(duplicate\)"),
  ],
)
@pytest.mark.hostile
def test_prompt_ids_that_would_escape_or_collide_are_refused_before_sampling(trained, tmp_path, rows, match):
  _, workdir = trained
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(ValueError, match=match):
    sample.load_prompts(str(prompts))
  out = tmp_path / "videos"
  run = _run([f"--workdir={workdir}", f"--prompts={prompts}", f"--out={out}"])
  assert run.returncode == 2 and "Traceback" not in run.stderr
  assert not out.exists() and not (tmp_path / "x.mp4").exists()


def test_the_readme_python_example_runs(trained, tmp_path, monkeypatch):
  """The README's Pipeline snippet, verbatim but for the workdir it names."""
  _, workdir = trained
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
  assert 'Pipeline.from_workdir("workdir/tiny")' in snippet
  monkeypatch.chdir(tmp_path)
  exec(snippet.replace('"workdir/tiny"', repr(workdir)), {})  # pylint: disable=exec-used
  with av.open(str(tmp_path / "out.mp4")) as container:
    assert len(list(container.decode(container.streams.video[0]))) == 5


@pytest.mark.hostile
@pytest.mark.parametrize(
  "flag,named",
  [
    ("--guidance=nan", "--guidance=nan"),
    ("--shift=0", "--shift=0"),
    ("--shift=-1", "--shift=-1"),
    ("--steps=0", "--steps=0"),
    ("--fps=0", "--fps=0"),
    ("--num_frames=-3", "--num_frames=-3"),
    ("--config.sample.guidance=nan", "sample.guidance=nan"),
  ],
)
def test_a_value_that_would_give_a_garbage_video_is_refused_before_anything_runs(trained, tmp_path, flag, named):
  """NaN guidance or shift <= 0 made a black mp4, 0 steps pure noise, fps 0 a 24 fps file, all with status 0."""
  _, workdir = trained
  out = tmp_path / "out.mp4"
  run = _run([f"--workdir={workdir}", "--prompt=cells divide", f"--out={out}", flag])
  assert run.returncode == 2 and not out.exists(), run.stderr[-2000:]
  assert run.stderr.strip().splitlines() == [run.stderr.strip()] and named in run.stderr, run.stderr
  assert "videos to generate" not in run.stdout


@pytest.mark.hostile
def test_the_pipeline_refuses_garbage_settings_from_its_config_or_its_arguments():
  c = microsim_tiny.get_config("test")
  c.sample.guidance = float("nan")
  pipe = pipeline.Pipeline(plans.resolve(c, 1), None, None, None)  # refused before the model is used
  with pytest.raises(ValueError, match=r"sample\.guidance=nan: expected a finite number"):
    pipe(["cells divide"])
  c.sample.guidance = 5.0
  c.sample.steps = 0
  with pytest.raises(ValueError, match=r"sample\.steps=0"):
    pipe(["cells divide"])
  with pytest.raises(ValueError, match=r"^shift=-1\.0: expected a number > 0"):
    pipe(["cells divide"], steps=2, shift=-1.0)
