"""Short clips are trained, not skipped: length buckets (one static shape per batch), exact resume
with pending rows, the latent cache's buckets, and a mixed-length (9-29 frames) training run."""

from __future__ import annotations

import json
import os
import re

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from microverse_jax import build_dataset, input_pipeline, latent_cache, train, video
from microverse_jax.configs import microsim_tiny
from microverse_jax.datasets.microsim_synth import render_clip

LENGTHS = list(range(9, 30, 2))  # 9, 11, ..., 29 frames: buckets 9, 13, 17 at num_frames=17


def _clip(num_frames: int, seed: int) -> bytes:
  params = {"num_particles": 4, "radius_px": 2.0, "diffusion_px2_per_frame": 1.0}
  frames = render_clip("brownian", params, num_frames=num_frames, size=32, seed=seed)
  return video.encode_mp4(np.ascontiguousarray(frames), fps=8)


@pytest.fixture(scope="module")
def mixed_data_dir(tmp_path_factory) -> str:
  """microsim10k built (the real builder, DiffSynth layout) from mp4s of 9..29 frames and one of 3."""
  manual = tmp_path_factory.mktemp("mixed_manual")
  (manual / "videos").mkdir()
  rows = []
  for i, n in enumerate(LENGTHS):
    (manual / "videos" / f"c{i}.mp4").write_bytes(_clip(n, i))
    rows.append({"id": f"c{i}", "video": f"videos/c{i}.mp4", "prompt": f"{n} frames of beads"})
  (manual / "metadata.json").write_text(json.dumps(rows))
  data_dir = str(tmp_path_factory.mktemp("mixed_data"))
  build_dataset.build("microsim10k", data_dir, manual_dir=str(manual))
  return data_dir


def _records(lengths):
  return [{"id": f"r{i}", "caption": f"clip {i}", "video": _clip(n, i), "num_frames": n} for i, n in enumerate(lengths)]


def _iterator(source, **overrides):
  kwargs = dict(
    batch_size=2,
    num_frames=17,
    height=16,
    width=16,
    tokenizer=input_pipeline.ByteTokenizer(16),
    seed=5,
    shard_index=0,
    shard_count=1,
  )
  kwargs.update(overrides)
  return input_pipeline.make_video_iterator(source, **kwargs)


def _take(it, n):
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_bucket_sizes_and_assignment():
  assert input_pipeline.bucket_sizes(81) == tuple(range(5, 82, 4)) and len(input_pipeline.bucket_sizes(81)) == 20
  assert input_pipeline.bucket_sizes(17, (9, 5)) == (5, 9, 17)  # num_frames is always the largest
  assert input_pipeline.bucket_sizes(1) == (1,)
  with pytest.raises(ValueError, match="not 4k \\+ 1"):
    input_pipeline.bucket_sizes(17, (8,))
  with pytest.raises(ValueError, match="not 4k \\+ 1"):
    input_pipeline.bucket_sizes(17, (21,))
  buckets = input_pipeline.bucket_sizes(17)
  got = {n: input_pipeline.bucket_for(n, buckets) for n in (3, 4, 5, 8, 9, 12, 13, 16, 17, 40)}
  assert got == {3: 0, 4: 0, 5: 5, 8: 5, 9: 9, 12: 9, 13: 13, 16: 13, 17: 17, 40: 17}
  assert input_pipeline.bucket_for(16, (9, 17)) == 9  # a coarse list rounds down further


def test_each_batch_has_one_bucket_and_every_clip_is_trained():
  records = _records([3, 4, 5, 9, 11, 13, 17, 20, 29, 6])  # two under 5 frames
  it = _iterator(records, shuffle=False, num_epochs=1, drop_remainder=False)
  batches = list(it)
  seen = {}
  for b in batches:
    frames = b["video"].shape[1]
    assert frames in (5, 9, 13, 17)
    for index in b["index"][b["index"] >= 0]:
      seen[int(index)] = frames
  expected = {i: input_pipeline.bucket_for(r["num_frames"], (5, 9, 13, 17)) for i, r in enumerate(records)}
  assert seen == {i: f for i, f in expected.items() if f}
  assert it.skip_counts == {"corrupt": 0, "too_short": 2}
  # The frames are the clip's first F, decoded as a single-bucket pipeline would.
  row = next(b for b in batches if 6 in b["index"])
  k = list(row["index"]).index(6)
  frames = video.decode_frames(records[6]["video"], 17, height=16, width=16)
  np.testing.assert_allclose(row["video"][k], video.to_model_range(frames), atol=1e-6)


def test_pending_rows_restore_exactly(tmp_path):
  records = _records([9, 13, 17, 11, 29, 15, 21, 5, 10, 25, 18])
  it = _iterator(records)
  _take(it, 3)
  state = it.get_state()
  assert any(state["pipeline"]["pending"].values())  # some bucket is part-filled at this point
  expected = _take(it, 6)
  fresh = _iterator(records)
  fresh.set_state(state)
  _same(_take(fresh, 6), expected)
  # Through Orbax, as the trainer checkpoints it.
  it = _iterator(records)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 4)
    restored = _iterator(records)
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _same(_take(restored, 4), expected)


class _LatentSource(list):
  pass


def test_latent_cache_is_bucketed_and_cropped():
  rng = np.random.default_rng(0)
  cache = _LatentSource(
    {"latents": rng.normal(size=(f, 2, 2, 4)).astype(np.float32), "context": np.ones((3, 8), np.float32)}
    for f in (1, 3, 5, 2, 5, 4, 3)
  )
  it = latent_cache.make_iterator(
    cache,
    batch_size=2,
    seed=0,
    text_length=4,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    shard_index=0,
    shard_count=1,
  )
  for b in it:  # no buckets given: each F' of the cache is its own bucket
    rows = b["index"][b["index"] >= 0]
    assert all(cache[int(i)]["latents"].shape[0] == b["latents"].shape[1] for i in rows)
  # Latent buckets (2, 3, 5) = frames (5, 9, 17): records are cropped to the largest they reach.
  it = latent_cache.make_iterator(
    cache,
    batch_size=1,
    seed=0,
    text_length=4,
    shuffle=False,
    num_epochs=1,
    shard_index=0,
    shard_count=1,
    latent_buckets=(2, 3, 5),
  )
  got = {int(b["index"][0]): b["latents"][0] for b in it}
  assert {i: x.shape[0] for i, x in got.items()} == {1: 3, 2: 5, 3: 2, 4: 5, 5: 3, 6: 3}
  np.testing.assert_array_equal(got[5], cache[5]["latents"][:3])
  assert it.skip_counts["too_short"] == 1  # the 1-latent record (a 1-frame clip)


def test_mixed_lengths_train_with_num_frames_17(mixed_data_dir, tmp_path, capsys):
  c = microsim_tiny.get_config("test")
  c.data.update(name="microsim10k", data_dir=mixed_data_dir, num_frames=17, batch_size=2)
  c.train.update(num_steps=8, checkpoint_every=8)
  last = train.train(c, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert last["skipped_clips"] == 0 and np.isfinite(last["loss"])
  compiles = re.findall(r"compiled the step for .*video\((\d+), (\d+),[^)]*\) in ([\d.]+) s", out)
  frames = sorted({int(f) for _, f, _ in compiles})
  assert len(compiles) == len(frames) >= 2 and set(frames) <= {9, 13, 17}, out  # each shape compiled once
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["skipped_clips"] == 0
  with open(os.environ.get("SHORT_CLIPS_TIMINGS", os.devnull), "a", encoding="utf-8") as f:
    f.write(json.dumps({int(fr): float(t) for _, fr, t in compiles}) + "\n")
