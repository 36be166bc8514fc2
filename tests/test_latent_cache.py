"""latent_cache: the format (folder, shard names, records stored bf16), the writer (settings checked before a
shard is written, each shard whole, metadata once a split is complete) and the reader (`recorded`, batches)."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from array_record.python import array_record_module

from microverse_jax import input_pipeline, latent_cache

SETTINGS = latent_cache.encoding_settings("toy", text_length=6, num_frames=5, height=16, width=16, frame_stride=1)


def records(n, shape=(3, 4, 4, 3), tokens=(2, 4, 6, 3), width=8):
  """n records: latents `shape` = i + position / 100, context (tokens[i % 4], width) = i."""
  out = []
  for i in range(n):
    latents = i + np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 100
    out.append((f"id{i}", f"caption {i}", latents, np.full((tokens[i % len(tokens)], width), i, np.float32), 10 + i))
  return out


def write_cache(root, rows, settings=SETTINGS, split="train", num_shards=1):
  """A latent cache of `rows` (id, caption, latents, context, source_index) under ROOT, as encode writes one:
  settings first, then each shard, then the metadata. Returns what `finalize` returned."""
  split_dir = latent_cache.cache_dir(str(root), settings["source_dataset"])
  split_dir.mkdir(parents=True, exist_ok=True)
  latent_cache.check_settings(split_dir, settings, write=True)
  spec = latent_cache.features()
  for shard in range(num_shards):
    data = [latent_cache.serialize(spec, *row) for row in rows[shard::num_shards]]
    latent_cache.write_shard(latent_cache.shard_path(split_dir, split, shard, num_shards), data)
  return latent_cache.finalize(str(root), settings)


# ------------------------------------------------------------------------------ format
def test_the_cache_folder_and_shard_names():
  assert latent_cache.cache_dir("/r", "microsim_synth") == latent_cache.epath.Path("/r/microsim_synth_latents/1.0.0")
  split_dir = latent_cache.cache_dir("/r", "toy")
  path = latent_cache.shard_path(split_dir, "validation", 3, 12)
  assert path.name == "toy_latents-validation.array_record-00003-of-00012" and path.parent == split_dir
  assert SETTINGS == dict(text_length=6, num_frames=5, height=16, width=16, frame_stride=1, source_dataset="toy")


# ------------------------------------------------------------------------------ writer -> reader
def test_written_records_read_back_as_bf16_with_their_settings(tmp_path):
  rows = records(5)
  assert write_cache(tmp_path, rows, num_shards=2)
  source = input_pipeline.load_source("toy_latents", "train", str(tmp_path))
  assert len(source) == 5 and dict(source.dataset_info.metadata) == SETTINGS
  by_id = {source[i]["id"].decode(): source[i] for i in range(5)}
  for record_id, caption, latents, context, index in rows:
    got = by_id[record_id]
    assert got["caption"].decode() == caption and got["source_index"] == index
    assert got["latents"].dtype == ml_dtypes.bfloat16 and got["latents"].shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(got["latents"], latents.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(got["context"], context.astype(ml_dtypes.bfloat16))
  assert latent_cache.recorded(source) == dict(
    height=16, width=16, num_frames=5, frame_stride=1, text_length=6, context_width=8, latent_channels=3
  )


def test_a_split_with_a_missing_shard_gets_no_metadata(tmp_path):
  split_dir = latent_cache.cache_dir(str(tmp_path), "toy")
  split_dir.mkdir(parents=True)
  rows = [latent_cache.serialize(latent_cache.features(), *row) for row in records(2)]
  latent_cache.write_shard(latent_cache.shard_path(split_dir, "train", 0, 2), rows)  # shard 1 of 2 not yet written
  assert not latent_cache.finalize(str(tmp_path), SETTINGS)
  assert not (split_dir / "dataset_info.json").exists()
  latent_cache.write_shard(latent_cache.shard_path(split_dir, "train", 1, 2), rows)
  assert latent_cache.finalize(str(tmp_path), SETTINGS)
  assert len(input_pipeline.load_source("toy_latents", "train", str(tmp_path))) == 4


def test_a_complete_split_waits_for_a_partial_one_and_keeps_its_earlier_metadata(tmp_path):
  """Process 0 of 2 finishing a second split first: no crash, no metadata yet; the last process finalizes both."""
  assert write_cache(tmp_path, records(2), split="validation")  # the first split, finalized earlier
  split_dir = latent_cache.cache_dir(str(tmp_path), "toy")
  rows = [latent_cache.serialize(latent_cache.features(), *row) for row in records(3)]
  latent_cache.write_shard(latent_cache.shard_path(split_dir, "train", 0, 2), rows)
  assert not latent_cache.finalize(str(tmp_path), SETTINGS)
  assert len(input_pipeline.load_source("toy_latents", "validation", str(tmp_path))) == 2  # still readable
  latent_cache.write_shard(latent_cache.shard_path(split_dir, "train", 1, 2), rows)
  assert latent_cache.finalize(str(tmp_path), SETTINGS)
  assert len(input_pipeline.load_source("toy_latents", "train", str(tmp_path))) == 6


def test_write_shard_leaves_only_the_whole_shard(tmp_path):
  path = latent_cache.epath.Path(tmp_path) / "toy_latents-train.array_record-00000-of-00001"
  latent_cache.write_shard(path, [b"one", b"two"])
  assert os.listdir(tmp_path) == [path.name]
  reader = array_record_module.ArrayRecordReader(str(path))
  assert reader.num_records() == 2 and reader.read_all() == [b"one", b"two"]
  reader.close()


def test_check_settings_records_new_settings_and_refuses_other_ones(tmp_path):
  split_dir = latent_cache.epath.Path(tmp_path)
  latent_cache.check_settings(split_dir, SETTINGS, write=False)  # not process 0: writes nothing
  assert not (tmp_path / "metadata.json").exists()
  latent_cache.check_settings(split_dir, SETTINGS, write=True)
  assert json.loads((tmp_path / "metadata.json").read_text()) == SETTINGS
  latent_cache.check_settings(split_dir, SETTINGS, write=True)  # the same settings: shards may be added
  other = {**SETTINGS, "height": 32, "text_length": 8}
  with pytest.raises(ValueError, match=rf"the latent cache {tmp_path} was encoded with text_length 6 \(asked: 8\), "):
    latent_cache.check_settings(split_dir, other, write=True)
  (tmp_path / "metadata.json").write_text("{")
  with pytest.raises(ValueError, match=f"{tmp_path / 'metadata.json'}: not JSON; delete the cache folder"):
    latent_cache.check_settings(split_dir, SETTINGS, write=True)


# ------------------------------------------------------------------------------ batches
def test_batches_pad_each_caption_to_the_caches_text_length(tmp_path):
  write_cache(tmp_path, records(4))
  source = input_pipeline.load_source("toy_latents", "train", str(tmp_path))
  it = latent_cache.make_iterator(
    source, batch_size=4, seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1
  )
  batch = next(it)
  assert batch["latents"].shape == (4, 3, 4, 4, 3) and batch["latents"].dtype == np.float32
  assert batch["context"].shape == (4, 6, 8) and batch["context"].dtype == np.float32  # text_length 6 (metadata)
  for row, index in enumerate(batch["index"]):
    n = source[int(index)]["context"].shape[0]
    assert batch["context_mask"][row].tolist() == [True] * n + [False] * (6 - n)
    assert (batch["context"][row, :n] == int(index)).all() and not batch["context"][row, n:].any()


def test_a_caption_longer_than_the_text_length_is_skipped_as_corrupt(tmp_path):
  write_cache(tmp_path, records(4))  # captions of 2, 4, 6 and 3 tokens
  source = input_pipeline.load_source("toy_latents", "train", str(tmp_path))
  it = latent_cache.make_iterator(
    source, batch_size=1, seed=0, text_length=4, shuffle=False, num_epochs=1, shard_index=0, shard_count=1
  )
  kept = sorted(int(source[int(b["index"][0])]["context"].shape[0]) for b in it)
  assert kept == [2, 3, 4] and it.skip_counts["corrupt"] == 1
