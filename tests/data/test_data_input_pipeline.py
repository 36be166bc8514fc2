"""Raw-video Grain pipeline: shapes, ranges, the frame rule, determinism, exact resume, sharding, skips."""

from __future__ import annotations

import pickle

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from microverse_jax import input_pipeline, video

F, H, W = 9, 24, 40


@pytest.fixture(scope="module")
def synth_train(synth_data_dir):
  return input_pipeline.load_source("microsim_synth", "train", synth_data_dir)


def _iterator(source, **overrides):
  kwargs = dict(
    batch_size=4,
    num_frames=F,
    height=H,
    width=W,
    tokenizer=input_pipeline.ByteTokenizer(32),
    seed=7,
    shard_index=0,
    shard_count=1,
  )
  kwargs.update(overrides)
  return input_pipeline.make_video_iterator(source, **kwargs)


def _take(iterator, n):
  return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_byte_tokenizer():
  tok = input_pipeline.ByteTokenizer(6)
  ids, mask = tok(["hé", "abcdefgh", ""])
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (3, 6)
  np.testing.assert_array_equal(ids[0], [ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 1, 0, 0])  # UTF-8 bytes + 3, eos
  np.testing.assert_array_equal(ids[1], [ord(c) + 3 for c in "abcde"] + [1])  # truncated, eos kept
  np.testing.assert_array_equal(ids[2], [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(mask, ids > 0)
  assert ids.max() < tok.vocab_size == 259
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone(["hé"])[0], ids[:1])
  with pytest.raises(ValueError, match="vocab_size"):
    input_pipeline.ByteTokenizer(8, vocab_size=100)


def test_batch_shapes_dtypes_and_ranges(synth_train):
  batch = next(_iterator(synth_train))
  assert set(batch) == {"video", "text_ids", "text_mask", "index"}
  assert batch["video"].shape == (4, F, H, W, 3) and batch["video"].dtype == np.float32
  assert batch["text_ids"].shape == (4, 32) and batch["text_ids"].dtype == np.int32
  assert batch["text_mask"].shape == (4, 32) and batch["text_mask"].dtype == bool
  assert batch["index"].shape == (4,) and batch["index"].dtype == np.int64
  assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0 and batch["video"].std() > 0.05
  np.testing.assert_array_equal(batch["text_mask"], batch["text_ids"] > 0)
  for row, index in enumerate(batch["index"]):
    record = synth_train[int(index)]
    expected_ids, _ = input_pipeline.ByteTokenizer(32)([record["caption"].decode()])
    np.testing.assert_array_equal(batch["text_ids"][row], expected_ids[0])
    frames = video.decode_frames(record["video"], F, height=H, width=W)
    np.testing.assert_allclose(batch["video"][row], video.to_model_range(frames), atol=1e-6)


def test_frame_count_rule_and_stride(microsim10k_data_dir):
  source = input_pipeline.load_source("microsim10k", "train", microsim10k_data_dir)
  lengths = [int(source[i]["num_frames"]) for i in range(len(source))]  # 9..14 frames
  with pytest.raises(ValueError, match="4k \\+ 1"):
    _iterator(source, num_frames=12)
  # The recipe: a shorter clip is trained at the largest 4k + 1 frames it has (its length bucket).
  it = _iterator(source, num_frames=13, height=16, width=16, batch_size=1, shuffle=False, num_epochs=1)
  frames = {int(b["index"][0]): b["video"].shape[1] for b in it}
  assert frames == {i: video.recipe_num_frames(n, 13) for i, n in enumerate(lengths)}
  assert it.skip_counts == {"corrupt": 0, "too_short": 0}
  # One bucket (the old rule): clips shorter than num_frames are skipped and counted.
  it = _iterator(
    source, num_frames=13, height=16, width=16, batch_size=1, shuffle=False, num_epochs=1, frame_buckets=(13,)
  )
  kept = [int(b["index"][0]) for b in it]
  assert kept == [i for i, n in enumerate(lengths) if n >= 13]
  assert it.skip_counts == {"corrupt": 0, "too_short": sum(n < 13 for n in lengths)}
  # Stride 2 reads frames 0, 2, ..., so a 9-frame clip gives 5 frames.
  it = _iterator(source, num_frames=5, frame_stride=2, batch_size=1, shuffle=False, num_epochs=1)
  assert sum(1 for _ in it) == len(source) and it.skip_counts["too_short"] == 0
  it = _iterator(source, num_frames=9, frame_stride=2, batch_size=1, shuffle=False, num_epochs=1, frame_buckets=(9,))
  assert sum(1 for _ in it) == sum(((n - 1) // 2 + 1) >= 9 for n in lengths)


def test_all_too_short_raises_instead_of_spinning(synth_train, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_MAX_CONSECUTIVE_SKIPS", 40)
  with pytest.raises(ValueError, match="in a row failed to load"):
    next(_iterator(synth_train, num_frames=13, frame_buckets=(13,)))


def test_deterministic_under_seed_and_reshuffled_each_epoch(synth_train):
  n = len(synth_train)
  a = _take(_iterator(synth_train, batch_size=1), 2 * n)
  _assert_same_batches(a, _take(_iterator(synth_train, batch_size=1), 2 * n))
  order = [int(b["index"][0]) for b in a]
  assert sorted(order[:n]) == sorted(order[n:]) == list(range(n))  # every epoch sees every record
  assert order[:n] != order[n:]
  other = [int(b["index"][0]) for b in _take(_iterator(synth_train, batch_size=1, seed=8), n)]
  assert other != order[:n]
  plain = [int(b["index"][0]) for b in _iterator(synth_train, batch_size=1, shuffle=False, num_epochs=1)]
  assert plain == list(range(n))


def test_restored_state_replays_exactly(synth_train, tmp_path):
  it = _iterator(synth_train)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)  # crosses an epoch boundary (11 records, batches of 4)
  fresh = _iterator(synth_train)
  fresh.set_state(state)
  _assert_same_batches(_take(fresh, 4), expected)

  # Through Orbax, as the trainer checkpoints it.
  it = _iterator(synth_train)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 3)
    restored = _iterator(synth_train)
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(_take(restored, 3), expected)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_shards_are_disjoint_and_cover(synth_train, drop_remainder):
  n = len(synth_train)  # 11: odd, so the remainder matters
  shards = []
  for p in range(2):
    it = _iterator(synth_train, batch_size=2, num_epochs=1, shard_index=p, shard_count=2, drop_remainder=drop_remainder)
    shards.append(np.concatenate([b["index"] for b in it]))
  real = [set(s[s >= 0].tolist()) for s in shards]
  assert not real[0] & real[1]
  if drop_remainder:
    assert [len(s) for s in shards] == [4, 4]  # 5 records each, the last partial batch dropped
    assert len(real[0] | real[1]) == 8
  else:
    assert [len(s) for s in shards] == [6, 6]  # 6 records each (one pad), batches of 2
    assert real[0] | real[1] == set(range(n))
    assert (shards[1] == -1).sum() == 1 and (shards[0] == -1).sum() == 0


def test_padded_last_batch(synth_train):
  batches = list(_iterator(synth_train, batch_size=4, num_epochs=1, shuffle=False, drop_remainder=False))
  assert [b["video"].shape[0] for b in batches] == [4, 4, 4]
  last = batches[-1]
  np.testing.assert_array_equal(last["index"], [8, 9, 10, -1])
  assert not last["text_mask"][3].any() and (last["text_ids"][3] == 0).all()


def test_corrupt_records_are_skipped_and_counted(synth_train):
  records = [dict(synth_train[i]) for i in range(6)]
  records[1]["video"] = b"garbage" * 100
  records[4]["video"] = records[4]["video"][:200]  # truncated
  records[5] = {"video": records[5]["video"]}  # missing keys
  it = _iterator(records, batch_size=1, shuffle=False, num_epochs=1)
  assert [int(b["index"][0]) for b in it] == [0, 2, 3]
  assert it.skip_counts == {"corrupt": 3, "too_short": 0}
  # The counts are part of the state.
  it = _iterator(records, batch_size=1, shuffle=False, num_epochs=None)
  assert [int(b["index"][0]) for b in _take(it, 4)] == [0, 2, 3, 0]  # 1, then 4 and 5 skipped
  state = it.get_state()
  fresh = _iterator(records, batch_size=1, shuffle=False, num_epochs=None)
  fresh.set_state(state)
  assert fresh.skip_counts == it.skip_counts == {"corrupt": 3, "too_short": 0}
  assert int(next(fresh)["index"][0]) == int(next(it)["index"][0]) == 2


def test_worker_processes_give_the_same_batches(synth_train):
  expected = _take(_iterator(synth_train), 4)
  _assert_same_batches(_take(_iterator(synth_train, worker_count=1), 4), expected)


@pytest.mark.heavy
def test_worker_iterator_state_restores_exactly(synth_train):
  # Each of k workers batches its own slice (records w::k of the plan), so batches differ from the
  # in-process ones; the uninterrupted and the restored multi-worker streams must agree.
  it = _iterator(synth_train, worker_count=2)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  restored = _iterator(synth_train, worker_count=2)
  restored.set_state(state)
  _assert_same_batches(_take(restored, 3), expected)
  seen = np.concatenate([b["index"] for b in expected])
  assert set(seen.tolist()) <= set(range(len(synth_train)))
