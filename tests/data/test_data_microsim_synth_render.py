"""The ground-truth renderer: exported prompts -> <id>.mp4 that `microworldbench physics` scores."""

import json
import subprocess
import sys

import numpy as np
import pytest

from microverse_jax import video
from microverse_jax.datasets.microsim_synth import clip_spec, export_prompts, render, split_of


def test_rendered_ground_truth_scores_as_physics(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  export_prompts(prompts, num_clips=10, seed=0, num_frames=17, size=64)
  out = tmp_path / "gt"
  render.main([f"--prompts={prompts}", f"--out={out}", "--num_frames=9", "--size=32"])
  names = sorted(p.name for p in out.iterdir())
  assert names == sorted(f"{json.loads(l)['id']}.mp4" for l in prompts.read_text().splitlines())
  assert video.decode_frames((out / names[0]).read_bytes(), 9).shape == (9, 32, 32, 3)
  scores = tmp_path / "gt.json"
  run = subprocess.run(
    [sys.executable, "-m", "microworldbench", "physics", f"--videos={out}", f"--prompts={prompts}", f"--out={scores}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert "pass_rate" in run.stdout


def test_bad_ids_are_refused_before_rendering(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(
    json.dumps({"id": "../x", "process": "brownian", "params": {}, "seed": 0, "num_frames": 5, "size": 16, "fps": 8})
    + "\n"
  )
  with pytest.raises(SystemExit) as e:
    render.main([f"--prompts={prompts}", f"--out={tmp_path / 'gt'}"])
  assert e.value.code == 2 and not (tmp_path / "gt").exists()


def test_stored_rows_are_sorted_by_id_and_each_is_its_own_clip(synth_data_dir, synth_settings):
  n, seed, frames, size = (synth_settings[k] for k in ("num_clips", "seed", "num_frames", "size"))
  specs = [clip_spec(i, seed=seed, num_frames=frames, size=size, fps=8.0) for i in range(n)]
  renders = [render.stored_clip(s.process, s.params, seed=s.seed, num_frames=frames, size=size, fps=8.0) for s in specs]
  for split in ("train", "validation"):  # stored shuffled: a record's position is not its clip number
    rows = render.stored_rows(synth_data_dir, split)
    assert [r["id"] for r in rows] == [f"synth_{i:06d}" for i in range(n) if split_of(i, n) == split]
    for r in rows:
      i = int(r["id"].removeprefix("synth_"))
      assert (r["caption"], r["process"], r["params"]) == (specs[i].caption, specs[i].process, specs[i].params)
      assert r["size"] == size
      stored = video.decode_frames(r["video"], frames).astype(np.float32)
      assert np.argmin([np.abs(stored - x).mean() for x in renders]) == i  # mp4 encoding is not bit-exact
