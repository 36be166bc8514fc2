"""Grain input pipelines over TFDS ArrayRecord data sources: raw video here, cached latents in latent_cache.py.

Both pipelines run the same index plan (`build_iterator`), then load and batch:

  records 0..n-1 --shard by JAX process (p::P)--> --shuffle per epoch (seed)--> --repeat-->
  --load (decode / deserialize; a bad record becomes a skip marker)--> --batch by length bucket,
  skipping markers--> --worker processes (optional)--> --count skips, to float32 (main process)--> batches

Length buckets: a clip shorter than num_frames is trained at the largest 4k + 1 frames it has (the
recipe), rounded down to a bucket (`frame_buckets`, by default every 4k + 1 from 5 to num_frames);
each batch holds one bucket, so it has one static shape (one compile per bucket). The batcher keeps
one pending list per bucket and emits a bucket's batch when it fills; pending rows are part of the
iterator state (as source indices, reloaded on restore), so a restored iterator replays exactly.

Every process gets the same number of records per epoch. With `drop_remainder=True` the last
n mod P records are left out of the plan and a last partial batch is dropped; with
`drop_remainder=False` short shards and the last batch of each worker are padded with rows whose
`index` is -1 (black video, zero latents and context, all-False masks), keeping shapes static for jit.
Records that fail to load are skipped and counted (`iterator.skip_counts`), never raised. The
iterator's state (`get_state`/`set_state`, or Orbax via `grain.checkpoint.CheckpointSave/Restore`)
replays exactly, skip counts included. Worker processes are spawned: call from under
`if __name__ == "__main__":`; absl flags are marked parsed if nobody parsed them (Grain reads its own).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from microverse_jax import video

SKIP_REASONS = ("corrupt", "too_short")
_MAX_CONSECUTIVE_SKIPS = 1000


class Tokenizer(Protocol):
  """Text -> token ids. `__call__(texts)` returns ids int32 (n, L) and mask bool (n, L), L = max_length."""

  max_length: int

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


class ByteTokenizer:
  """UTF-8 bytes + 3 (0 = pad, 1 = eos, 2 unused): the tiny offline tokenizer of the CPU configs.

  Texts are truncated to max_length - 1 bytes, then eos is appended and the rest padded.
  """

  def __init__(self, max_length: int, vocab_size: int = 259):
    if max_length < 1:
      raise ValueError(f"ByteTokenizer max_length must be >= 1, got {max_length}")
    if vocab_size < 259:
      raise ValueError(f"ByteTokenizer needs vocab_size >= 259 (256 bytes + 3 specials), got {vocab_size}")
    self.max_length, self.vocab_size = max_length, vocab_size

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(texts), self.max_length), np.int32)
    for row, text in enumerate(texts):
      data = np.frombuffer(text.encode("utf-8")[: self.max_length - 1], np.uint8).astype(np.int32) + 3
      ids[row, : len(data)] = data
      ids[row, len(data)] = 1
    return ids, ids > 0


def load_source(name: str, split: str, data_dir: str) -> Any:
  """Random-access TFDS source for DATA_DIR/name/<newest version>/ (ArrayRecord), feeding Grain.

  Works for every dataset this repo writes (microsim10k, microsim_synth, latent caches) without
  importing its builder. Raises ValueError naming the directory when the dataset or split is missing.
  """
  root = epath.Path(data_dir) / name
  versions = []
  if root.is_dir():
    for child in root.iterdir():
      if (child / "dataset_info.json").exists():
        try:
          versions.append((tfds.core.Version(child.name), child))
        except ValueError:
          continue
  if not versions:
    raise ValueError(
      f"dataset {name!r} not found in {data_dir} (no {root}/<version>/dataset_info.json); "
      f"build it with `python -m microverse_jax.build_dataset {name} --data_dir={data_dir}`"
    )
  path = max(versions, key=lambda v: v[0])[1]
  builder = tfds.builder_from_directory(str(path))
  if split not in builder.info.splits:
    raise ValueError(f"dataset {name!r} at {path} has no split {split!r}; splits: {sorted(builder.info.splits.keys())}")
  return builder.as_data_source(split=split)


@dataclasses.dataclass(frozen=True)
class Skip:
  """What a loader returns for a record it cannot use: counted by `reason` (one of SKIP_REASONS), never raised."""

  reason: str


@dataclasses.dataclass(frozen=True)
class _ShardRecord:
  """Position i of shard `shard_index` of `shard_count` -> source record index."""

  shard_index: int
  shard_count: int

  def __call__(self, i: int) -> int:
    return self.shard_index + i * self.shard_count


def _padding_index(_: int) -> int:
  return -1


def _index_plan(
  num_records: int,
  *,
  seed: int,
  shuffle: bool,
  num_epochs: int | None,
  drop_remainder: bool,
  shard_index: int | None,
  shard_count: int | None,
) -> grain.MapDataset:
  """Source record indices this process reads, in order (-1 = padding row)."""
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  own = len(range(shard_index, num_records, shard_count))
  per_process = num_records // shard_count if drop_remainder else math.ceil(num_records / shard_count)
  if per_process == 0:
    raise ValueError(f"{num_records} records cannot give every one of {shard_count} processes a record")
  ds = grain.MapDataset.range(min(own, per_process)).map(_ShardRecord(shard_index, shard_count))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if per_process > own:
    ds = grain.MapDataset.concatenate([ds, grain.MapDataset.range(per_process - own).map(_padding_index)])
  return ds.repeat(num_epochs)


def bucket_sizes(num_frames: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
  """The frame counts batches may have, ascending; the largest is num_frames.

  Default: every 4k + 1 from 5 to num_frames (the recipe exactly: a clip keeps the largest 4k + 1
  frames it has). A given list (e.g. (17, 33, 49, 65, 81)) caps the number of compiles; a clip is then
  trained at the largest bucket it reaches, and clips under the smallest bucket are skipped ('too_short').
  """
  if num_frames < 1 or num_frames % 4 != 1:
    raise ValueError(f"data.num_frames={num_frames}: expected 4k + 1 (1, 5, 9, ..., 81)")
  if not buckets:
    return tuple(range(5, num_frames + 1, 4)) or (num_frames,)
  out = tuple(sorted({int(b) for b in buckets}))
  bad = [b for b in out if b < 1 or b % 4 != 1 or b > num_frames]
  if bad:
    raise ValueError(f"data.frame_buckets={list(buckets)}: {bad} not 4k + 1 in [1, data.num_frames={num_frames}]")
  return out if out[-1] == num_frames else (*out, num_frames)


def bucket_for(available: int, buckets: Sequence[int]) -> int:
  """The bucket a clip with `available` usable frames is trained at: the largest one it reaches, 0 if none."""
  n = video.recipe_num_frames(available, buckets[-1])
  return max((b for b in buckets if b <= n), default=0) if n >= min(5, buckets[-1]) else 0


class _LoadClip:
  """Source index -> {video uint8 (F, H, W, 3), text_ids, text_mask, index}, or a Skip marker.

  F is the clip's bucket (`bucket_for`); padding rows (index -1) have the largest one."""

  def __init__(
    self, source, *, buckets: tuple[int, ...], height: int, width: int, frame_stride: int, tokenizer: Tokenizer
  ):
    self.source, self.tokenizer, self.buckets = source, tokenizer, buckets
    self.height, self.width, self.frame_stride = height, width, frame_stride

  def __call__(self, index: int) -> dict | Skip:
    if index < 0:
      ids = np.zeros((self.tokenizer.max_length,), np.int32)
      return {
        "video": np.zeros((self.buckets[-1], self.height, self.width, 3), np.uint8),
        "text_ids": ids,
        "text_mask": ids > 0,
        "index": np.int64(-1),
      }
    try:
      record = self.source[index]
      frames = bucket_for(video.usable_frames(int(record["num_frames"]), self.frame_stride), self.buckets)
      if not frames:
        return Skip("too_short")
      clip = video.decode_frames(
        record["video"], frames, stride=self.frame_stride, height=self.height, width=self.width
      )
      caption = record["caption"]
      caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    except Exception:  # pylint: disable=broad-except  # any bad record is skipped and counted
      return Skip("corrupt")
    ids, mask = self.tokenizer([caption])
    return {"video": clip, "text_ids": ids[0], "text_mask": mask[0], "index": np.int64(index)}


def _finalize_video(batch: dict) -> dict:
  batch["video"] = video.to_model_range(batch["video"])
  return batch


class _BatchSkippingIterDataset(grain.IterDataset):
  """Stacks `batch_size` loaded elements of one length bucket into a batch, dropping skip markers
  and counting them.

  An element's bucket is the leading dim of its `bucket_key` array (frames or latent frames). Each
  bucket fills its own pending list; a batch is emitted when one fills. At the end of finite data
  the partial buckets are emitted in ascending order (padded with index -1 rows), or dropped with
  drop_remainder. Each batch carries `_skipped` int64 (len(SKIP_REASONS),): markers dropped while
  building it; skips not followed by a batch come in a batch holding only `_skipped`.
  """

  def __init__(
    self,
    parent: grain.IterDataset,
    *,
    batch_size: int,
    drop_remainder: bool,
    loader: Callable[[int], Any],
    bucket_key: str,
  ):
    super().__init__(parent)
    self.batch_size, self.drop_remainder = batch_size, drop_remainder
    self.loader, self.bucket_key = loader, bucket_key

  def __iter__(self) -> grain.DatasetIterator:
    return _BatchSkippingIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"BatchSkippingIterDataset(batch_size={self.batch_size}, bucket_key={self.bucket_key})"


class _BatchSkippingIterator(grain.DatasetIterator):
  def __init__(self, parent: grain.DatasetIterator, config: _BatchSkippingIterDataset):
    super().__init__(parent)
    self._config = config
    self._pending: dict[int, list[dict]] = {}

  def _stack(self, elements: list[dict], skipped: np.ndarray) -> dict:
    while len(elements) < self._config.batch_size:  # explicit padding, marked by index -1
      pad = {k: np.zeros_like(v) for k, v in elements[0].items()}
      pad["index"] = np.int64(-1)
      elements.append(pad)
    batch = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
    batch["_skipped"] = skipped
    return batch

  def __next__(self) -> dict:
    skipped, consecutive = np.zeros(len(SKIP_REASONS), np.int64), 0
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        break
      if isinstance(element, Skip):
        skipped[SKIP_REASONS.index(element.reason)] += 1
        consecutive += 1
        if consecutive >= _MAX_CONSECUTIVE_SKIPS:
          raise ValueError(
            f"{consecutive} records in a row failed to load "
            f"({dict(zip(SKIP_REASONS, skipped.tolist()))}); check the dataset, "
            f"num_frames and frame_stride"
          )
        continue
      consecutive = 0
      pending = self._pending.setdefault(int(element[self._config.bucket_key].shape[0]), [])
      pending.append(element)
      if len(pending) == self._config.batch_size:
        self._pending = {k: v for k, v in self._pending.items() if v is not pending}
        return self._stack(pending, skipped)
    # End of data: the partial buckets, smallest first (or none with drop_remainder).
    if self._config.drop_remainder:
      self._pending = {}
    if self._pending:
      bucket = min(self._pending)
      return self._stack(self._pending.pop(bucket), skipped)
    if skipped.any():  # still report the skips, in a batch of counts only
      return {"_skipped": skipped}
    raise StopIteration

  def get_state(self) -> dict:
    # Pending rows as source indices (JSON-friendly); restoring reloads them with the loader.
    return {
      "parent": self._parent.get_state(),
      "pending": {str(k): [int(e["index"]) for e in v] for k, v in sorted(self._pending.items())},
    }

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._pending = {int(k): [self._config.loader(i) for i in v] for k, v in state["pending"].items()}


class _FinalizeIterDataset(grain.IterDataset):
  """Outermost stage, in the main process: pops `_skipped` into `iterator.skip_counts` and converts
  the compact stored dtypes (uint8 video, bf16 latents) to float32, so workers send 2-4x fewer bytes."""

  def __init__(self, parent: grain.IterDataset, finalize: Callable[[dict], dict], num_records: int):
    super().__init__(parent)
    self.finalize, self.num_records = finalize, num_records

  def __iter__(self) -> grain.DatasetIterator:
    return PipelineIterator(self._parent.__iter__(), self.finalize, self.num_records)


class PipelineIterator(grain.DatasetIterator):
  """The iterator both pipelines return. `skip_counts`: records skipped so far, by reason."""

  def __init__(self, parent: grain.DatasetIterator, finalize: Callable[[dict], dict], num_records: int = 0):
    super().__init__(parent)
    self._finalize = finalize
    self._skipped = np.zeros(len(SKIP_REASONS), np.int64)
    self.num_records = num_records  # records in the source (every process's, before sharding)

  @property
  def skip_counts(self) -> dict[str, int]:
    return dict(zip(SKIP_REASONS, self._skipped.tolist()))

  def __next__(self) -> dict:
    batch = next(self._parent)
    self._skipped += batch.pop("_skipped")
    while not batch:  # counts-only batch at the end of the data
      batch = next(self._parent)
      self._skipped += batch.pop("_skipped")
    return self._finalize(batch)

  def get_state(self) -> dict:
    return {"pipeline": self._parent.get_state(), "skipped": self._skipped.tolist()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["pipeline"])
    self._skipped = np.asarray(state["skipped"], np.int64)


def build_iterator(
  source,
  loader,
  finalize,
  bucket_key: str,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool,
  num_epochs: int | None,
  worker_count: int,
  drop_remainder: bool,
  shard_index: int | None,
  shard_count: int | None,
  read_threads: int,
) -> PipelineIterator:
  """The pipeline over `source`: this process's index plan, `loader(index)` -> element (or a Skip),
  batches of one `bucket_key` leading dim, `finalize(batch)` in the main process (see the module doc)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  plan = _index_plan(
    len(source),
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  ds = plan.map(loader).to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size, read_threads))
  )
  ds = _BatchSkippingIterDataset(
    ds, batch_size=batch_size, drop_remainder=drop_remainder, loader=loader, bucket_key=bucket_key
  )
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags when it starts workers.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2))
  return iter(_FinalizeIterDataset(ds, finalize, len(source)))


def make_video_iterator(
  source,
  *,
  batch_size: int,
  num_frames: int,
  height: int,
  width: int,
  tokenizer: Tokenizer,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  worker_count: int = 0,
  frame_stride: int = 1,
  drop_remainder: bool = True,
  shard_index: int | None = None,
  shard_count: int | None = None,
  read_threads: int = 2,
  frame_buckets: Sequence[int] | None = None,
) -> PipelineIterator:
  """Raw-video batches for this process from a clip source (`load_source`), decoded with PyAV.

  Each clip gives its first F frames (every `frame_stride`-th), resized bilinearly to cover
  height x width and centre-cropped, scaled to [-1, 1]; the caption is tokenised. num_frames must be
  4k + 1 (the Wan-VAE rule). F is num_frames, or for a shorter clip the largest 4k + 1 it has (the
  recipe), rounded down to one of `frame_buckets` (default: every 4k + 1 from 5 to num_frames; see
  `bucket_sizes`); each batch holds clips of one F. Clips under 5 frames (or under the smallest
  bucket) are skipped and counted ('too_short'). frame_buckets=(num_frames,) skips every short clip.

  Yields dicts of numpy arrays (B = batch_size, the per-process batch):
    video      float32 (B, F, H, W, 3) in [-1, 1], F one of the buckets
    text_ids   int32   (B, L)   L = tokenizer.max_length
    text_mask  bool    (B, L)
    index      int64   (B,)     source record index; -1 marks a padding row
  The shard is this JAX process's unless shard_index/shard_count are given. worker_count > 0 decodes
  in that many worker processes (spawned: call from under `if __name__ == "__main__":`).
  """
  buckets = bucket_sizes(num_frames, frame_buckets)
  if frame_stride < 1:
    raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
  loader = _LoadClip(
    source, buckets=buckets, height=height, width=width, frame_stride=frame_stride, tokenizer=tokenizer
  )
  return build_iterator(
    source,
    loader,
    _finalize_video,
    "video",
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
