"""The latent cache: Wan-VAE latents and text-encoder states of every clip of a dataset (format, writer, reader).

Format: a TFDS ArrayRecord dataset ROOT/<dataset>_latents/1.0.0/ (`cache_dir`) whose records (`features`) hold
  id, caption (str); latents bf16 (F', H', W', C); context bf16 (n, D), the n = number of caption
  tokens (eos included) rows of the text-encoder output; source_index int64.
Its metadata.json records what it was encoded with (`encoding_settings`): text_length, num_frames, height,
width, frame_stride, source_dataset.

Writer (`python -m microverse_jax.encode` runs it): `check_settings` before anything is written, each shard
whole (`write_shard`: a temporary name, then a rename), then `finalize`: the TFDS metadata of every split
whose shards all exist. Reader: `make_iterator` (Grain batches over the input pipeline's plan, context
zero-padded to the cache's `text_length`) and `recorded` (what a cache holds, to check a config against).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Sequence

import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath

from microverse_jax import files, input_pipeline

VERSION = "1.0.0"


# =============================================================================================
# Format
# =============================================================================================
def cache_dir(root: str, dataset: str) -> epath.Path:
  """ROOT/<dataset>_latents/<VERSION>: where the cache of `dataset` lives (its shards and metadata)."""
  return epath.Path(root) / f"{dataset}_latents" / VERSION


def features() -> tfds.features.FeaturesDict:
  """Features of a latent-cache record (dynamic shapes: one feature spec serves every resolution)."""
  bf16 = ml_dtypes.bfloat16
  return tfds.features.FeaturesDict(
    {
      "id": tfds.features.Text(),
      "caption": tfds.features.Text(),
      "latents": tfds.features.Tensor(
        shape=(None, None, None, None), dtype=bf16, encoding=tfds.features.Encoding.BYTES, doc="(F', H', W', C)"
      ),
      "context": tfds.features.Tensor(
        shape=(None, None), dtype=bf16, encoding=tfds.features.Encoding.BYTES, doc="(n tokens, D)"
      ),
      "source_index": tfds.features.Scalar(dtype=np.int64),
    }
  )


def serialize(spec: tfds.features.FeaturesDict, record_id, caption, latents, context, source_index: int) -> bytes:
  """One record's bytes (`spec`: `features()`); latents (F', H', W', C) and context (n, D) are stored bf16."""
  bf16 = ml_dtypes.bfloat16
  return spec.serialize_example(
    {
      "id": record_id,
      "caption": caption,
      "latents": np.asarray(latents).astype(bf16),
      "context": np.asarray(context).astype(bf16),
      "source_index": source_index,
    }
  )


def encoding_settings(
  dataset: str, text_length: int, num_frames: int, height: int, width: int, frame_stride: int
) -> dict:
  """What a cache was encoded with: its TFDS metadata (metadata.json), which training checks its config against."""
  return dict(
    text_length=text_length,
    num_frames=num_frames,
    height=height,
    width=width,
    frame_stride=frame_stride,
    source_dataset=dataset,
  )


# =============================================================================================
# Writer
# =============================================================================================
def check_settings(split_dir: epath.Path, settings: dict, write: bool) -> None:
  """Refuses to add shards to a cache encoded with other settings (it would mix shapes under metadata
  naming only the new ones); a new cache records its settings first (`write`: process 0)."""
  path = split_dir / "metadata.json"
  if not path.exists():
    if write:
      files.write_text(path, json.dumps(settings))
    return
  try:
    written = json.loads(path.read_text())
  except ValueError:
    raise ValueError(f"{path}: not JSON; delete the cache folder {split_dir} to encode again") from None
  differ = [f"{k} {written.get(k)} (asked: {v})" for k, v in settings.items() if written.get(k) != v]
  if differ:
    raise ValueError(
      f"the latent cache {split_dir} was encoded with {', '.join(differ)}: give another --out, "
      "or delete that folder to encode again"
    )


def shard_path(split_dir: epath.Path, split: str, shard: int, num_shards: int) -> epath.Path:
  """TFDS's file name for shard `shard` of `num_shards` of `split` in cache folder `split_dir` (`cache_dir`)."""
  return split_dir / f"{split_dir.parent.name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def write_shard(path: epath.Path, records: list[bytes]) -> None:
  """Writes records so that `path` appears only when complete (temp file + rename / atomic upload)."""
  local = "://" not in os.fspath(path)
  directory = os.fspath(path.parent) if local else None
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
  os.close(fd)
  try:
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    if local:
      os.replace(tmp, os.fspath(path))
    else:
      epath.Path(tmp).copy(path, overwrite=True)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<split>[^-.]+)\.array_record-(?P<shard>\d{5})-of-(?P<total>\d{5})$")


def finalize(root: str, settings: dict) -> bool:
  """Writes TFDS metadata for every split once every split's shards are all present; False while any split is
  partial (TFDS reads the folder's shards as the dataset: another process is still writing; the last to
  finish finalizes, and metadata written before stays readable until then)."""
  dataset = settings["source_dataset"]
  split_dir = cache_dir(root, dataset)
  name = split_dir.parent.name
  shards: dict[str, dict[int, epath.Path]] = {}
  totals: dict[str, int] = {}
  for path in split_dir.iterdir():
    match = _SHARD_RE.match(path.name)
    if match and match["name"] == name:
      shards.setdefault(match["split"], {})[int(match["shard"])] = path
      totals[match["split"]] = int(match["total"])
  complete = {s: paths for s, paths in shards.items() if len(paths) == totals[s]}
  if not complete or len(complete) < len(shards):
    return False
  template = tfds.core.ShardedFileTemplate(data_dir=split_dir, dataset_name=name, filetype_suffix="array_record")
  split_infos = []
  for split, paths in sorted(complete.items()):
    lengths = []
    for i in range(totals[split]):
      reader = array_record_module.ArrayRecordReader(os.fspath(paths[i]))
      lengths.append(reader.num_records())
      reader.close()
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0, filename_template=template))
  tfds.folder_dataset.write_metadata(
    data_dir=split_dir,
    features=features(),
    split_infos=split_infos,
    version=VERSION,
    filename_template=template,
    check_data=False,
    description=f"Wan-VAE latents and text-encoder states of {dataset}.",
    metadata=tfds.core.MetadataDict(settings),
  )
  return True


# =============================================================================================
# Reader
# =============================================================================================
def recorded(source) -> dict[str, int]:
  """What a cache (`input_pipeline.load_source` of <dataset>_latents) holds: its encoding settings
  height, width, num_frames, frame_stride, text_length, and record 0's context width and latent channels."""
  meta, record = source.dataset_info.metadata, source[0]
  out = {k: int(meta[k]) for k in ("height", "width", "num_frames", "frame_stride", "text_length")}
  return {**out, "context_width": record["context"].shape[-1], "latent_channels": record["latents"].shape[-1]}


class _LoadLatents:
  """Source index -> {latents, context (L, D) zero-padded, context_mask, index}, or a Skip marker."""

  def __init__(self, source, *, text_length: int, latent_buckets: tuple[int, ...] = ()):
    self.source, self.text_length, self.latent_buckets = source, text_length, latent_buckets

  def __call__(self, index: int) -> dict | input_pipeline.Skip:
    try:
      if index < 0:
        record = self.source[0]
        latents, tokens = np.zeros_like(record["latents"]), record["context"][:0]
      else:
        record = self.source[index]
        latents, tokens = record["latents"], record["context"]
        if self.latent_buckets:  # causal VAE: the first F' latents are those of the first 1 + 4(F' - 1) frames
          frames = max((b for b in self.latent_buckets if b <= latents.shape[0]), default=0)
          if not frames:
            return input_pipeline.Skip("too_short")
          latents = latents[:frames]
      if tokens.shape[0] > self.text_length:
        return input_pipeline.Skip("corrupt")
      context = np.zeros((self.text_length, tokens.shape[-1]), tokens.dtype)
      context[: tokens.shape[0]] = tokens
    except Exception:  # pylint: disable=broad-except  # any bad record is skipped and counted
      return input_pipeline.Skip("corrupt")
    return {
      "latents": latents,
      "context": context,
      "context_mask": np.arange(self.text_length) < tokens.shape[0],
      "index": np.int64(index),
    }


def _finalize_latents(batch: dict) -> dict:
  batch["latents"] = np.asarray(batch["latents"], np.float32)
  batch["context"] = np.asarray(batch["context"], np.float32)
  return batch


def make_iterator(
  source,
  *,
  batch_size: int,
  seed: int,
  text_length: int | None = None,
  shuffle: bool = True,
  num_epochs: int | None = None,
  worker_count: int = 0,
  drop_remainder: bool = True,
  shard_index: int | None = None,
  shard_count: int | None = None,
  read_threads: int = 2,
  latent_buckets: Sequence[int] = (),
) -> input_pipeline.PipelineIterator:
  """Batches from a latent cache (`input_pipeline.load_source` of <dataset>_latents; the fast path at scale).

  Yields dicts of numpy arrays (B = per-process batch):
    latents       float32 (B, F', H', W', C)   Wan-VAE latents (stored bf16)
    context       float32 (B, L, D)            text-encoder states, zero past each caption's tokens
    context_mask  bool    (B, L)
    index         int64   (B,)                 source record index; -1 marks a padding row
  L = text_length, by default the cache's own (its metadata `text_length`). Batches are bucketed by
  F' (a cache written with length buckets holds short clips at their own F'): one F' per batch.
  `latent_buckets` (latent frame counts, e.g. 1 + (frames - 1) // 4 of the config's frame buckets)
  crops each record to the largest bucket it reaches (exact: the Wan-VAE is causal in time) and skips
  records under the smallest ('too_short'); empty keeps every F' of the cache. The other arguments are
  `input_pipeline.make_video_iterator`'s.
  """
  if text_length is None:
    text_length = int(source.dataset_info.metadata["text_length"])
  loader = _LoadLatents(source, text_length=text_length, latent_buckets=tuple(sorted(latent_buckets)))
  return input_pipeline.build_iterator(
    source,
    loader,
    _finalize_latents,
    "latents",
    batch_size=batch_size,
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    worker_count=worker_count,
    drop_remainder=drop_remainder,
    shard_index=shard_index,
    shard_count=shard_count,
    read_threads=read_threads,
  )
