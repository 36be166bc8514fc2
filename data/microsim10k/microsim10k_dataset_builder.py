"""TFDS builder for MicroSim-10K (manual download) writing ArrayRecord.

The manual directory holds the release in any layout of `layouts.py`: the official DiffSynth
metadata file (`video` + `prompt`), or Hugging Face metadata (`file_name` + `text`/`caption`/`prompt`),
per-split folders, shards, Parquet. Videos are stored as the original encoded bytes (no re-encode)
with the frame count, fps and size found by decoding every frame; each video is read once.

Bad input never stops the build: rows that can't be parsed, rows without a prompt, video paths that
escape the manual dir, symlinks landing outside it, missing, non-regular (FIFO), oversized,
unreadable or truncated videos and duplicate ids are skipped and listed in `skipped.jsonl` beside the
dataset files, one JSON object per row: {"file", "row", "id", "video", "reason"}.

Splits: a published split (a `split` column, or a `train/`, `validation/`, `test/` folder or file
name) wins. Rows without one are split by a hash of their id (`validation_fraction`); so is a release
that publishes only `train` (no held-out split of its own), so that there is always a validation split.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
from typing import Callable, Iterator

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from microverse_jax import files, video
from microverse_jax.datasets import clip_features, dataset_info, id_hash_fraction
from microverse_jax.datasets.microsim10k import layouts
from microverse_jax.datasets.microsim10k.safe_files import MB, Reader, Unusable

SKIPPED_FILENAME = "skipped.jsonl"
DEFAULT_MAX_FILE_MB = 512  # a MicroSim-10K clip is a few MB; larger files are skipped, not loaded


class Microsim10k(tfds.core.GeneratorBasedBuilder):
  """MicroSim-10K: expert-verified microscopic-process videos with ~150-word captions."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Encoded videos as stored, deterministic hash-of-id validation split.",
    "1.1.0": "Every release layout (DiffSynth, Hugging Face, splits, shards, Parquet); published splits win.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the gated Hugging Face dataset wangrongsheng/MicroVerse (MicroSim-10K) and pass its
  directory (or its hub-cache snapshot) as --manual_dir. Every layout in docs/data.md is read.
  """

  def __init__(
    self,
    *,
    validation_fraction: float = 0.05,
    metadata_file: str | None = None,
    video_key: str | None = None,
    caption_key: str | None = None,
    id_key: str | None = None,
    follow_symlinks: bool = False,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    probe_threads: int | None = None,
    log: Callable[[str], None] | None = None,
    progress=None,
    **kwargs,
  ):
    """`progress`: an object with start(total) and update(n) (see build_dataset.Progress), or None."""
    if not 0.0 <= validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if max_file_mb <= 0:
      raise ValueError(f"max_file_mb must be > 0, got {max_file_mb}")
    self.validation_fraction = validation_fraction
    self.metadata_file = metadata_file
    self.keys = layouts.Keys(video=video_key, caption=caption_key, id=id_key)
    self.follow_symlinks = follow_symlinks
    self.max_bytes = int(max_file_mb * MB)
    self.probe_threads = probe_threads or min(8, (os.cpu_count() or 1) * 2)
    self.log = log or (lambda line: logging.info("microsim10k: %s", line))
    self.progress = progress
    self.skipped: list[dict] = []
    self.metadata: list[layouts.MetadataFile] = []
    super().__init__(**{"file_format": "array_record", **kwargs})

  def _info(self) -> tfds.core.DatasetInfo:
    return dataset_info(
      self,
      description=__doc__,
      features=clip_features(),
      homepage="https://huggingface.co/datasets/wangrongsheng/MicroVerse",
      metadata=tfds.core.MetadataDict(validation_fraction=self.validation_fraction),
    )

  def _skip(self, row: layouts.Row, reason: str | None = None) -> None:
    self.skipped.append(row.skipped() if reason is None else {**row.skipped(), "reason": reason})

  def read_layout(self, manual_dir: epath.Path) -> list[layouts.Row]:
    """The usable rows of every metadata file, one per id; logs what it found, records skips."""
    reader = Reader(manual_dir, self.max_bytes, self.follow_symlinks)
    paths = layouts.find_metadata(manual_dir, self.metadata_file)
    self.metadata = [layouts.read_metadata(reader, path, self.keys) for path in paths]
    self.log(f"{len(paths)} metadata file(s) in {manual_dir}:")
    for meta in self.metadata:
      self.log("  " + meta.describe())
    rows, seen = [], set()
    for row in (r for meta in self.metadata for r in meta.rows):
      if row.reason is not None:
        self._skip(row)
      elif row.id in seen:
        self._skip(row, "duplicate id")
      else:
        seen.add(row.id)
        rows.append(row)
    return rows

  def assign_splits(self, rows: list[layouts.Row]) -> dict[str, list[layouts.Row]]:
    """Published splits as given; the rest (and a train-only release) by id hash."""
    published = {r.split for r in rows if r.split}
    held_out = bool(published - {"train"})
    splits = collections.defaultdict(list)
    hashed = []
    for row in rows:
      if row.split and (held_out or row.split != "train"):
        splits[row.split].append(row)
      else:
        hashed.append(row)
    fractions = {r.id: id_hash_fraction(r.id) for r in hashed}
    validation = {i for i, f in fractions.items() if f < self.validation_fraction}
    if not validation and not splits["validation"] and len(hashed) >= 2 and self.validation_fraction > 0:
      validation = {min(fractions, key=fractions.get)}  # smallest hash: never empty
    for row in hashed:
      splits["validation" if row.id in validation else "train"].append(row)
    how = (
      "published"
      if not hashed
      else f"published + hash ({self.validation_fraction:g})"
      if published
      else f"hash of id ({self.validation_fraction:g})"
    )
    self.log(f"splits ({how}): " + ", ".join(f"{k} {len(v)}" for k, v in sorted(splits.items()) if v))
    return {k: v for k, v in splits.items() if v}

  def _split_generators(self, dl_manager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    self.skipped = []
    rows = self.read_layout(manual_dir)
    if not rows:
      raise ValueError(f"no usable rows in {manual_dir}; skipped rows: {self.skipped[:20]}")
    splits = self.assign_splits(rows)
    if self.progress is not None:
      self.progress.start(len(rows))
    reader = Reader(manual_dir, self.max_bytes, self.follow_symlinks)
    # TFDS refuses an empty split, and a video's use is known only once it is read: each split's first
    # usable clip is found here (read once, kept for its generator); a hash-made validation split
    # whose clips are all unusable takes the train clip with the smallest id hash instead.
    firsts = {name: self._first_usable(reader, split_rows) for name, split_rows in splits.items()}
    hashed_validation = not any(r.split == "validation" for r in rows)
    if firsts.get("validation", (None,))[0] is None and hashed_validation and firsts.get("train", (None,))[0]:
      by_hash = sorted(firsts["train"][1], key=lambda r: id_hash_fraction(r.id))
      first, rest = self._first_usable(reader, by_hash)
      tried = {r.id for r in by_hash[: len(by_hash) - len(rest)]}  # read once: not again in train
      firsts["train"] = (firsts["train"][0], [r for r in firsts["train"][1] if r.id not in tried])
      firsts["validation"] = (first, [])
    for name, (first, _) in firsts.items():
      if first is None:
        self.log(f"split {name}: no usable clip, left out")
    generators = {
      name: self._generate_examples(reader, first, rest) for name, (first, rest) in firsts.items() if first is not None
    }
    if not generators:
      raise ValueError(f"no usable clips in {manual_dir}; skipped rows: {self.skipped[:20]}")
    return generators

  def _load(self, reader: Reader, row: layouts.Row) -> tuple[bytes, video.VideoInfo] | str:
    """The video's bytes (read once) and what decoding them found, or the reason it is unusable."""
    try:
      data = reader.read(row.video)
    except Unusable as e:
      return str(e)
    try:
      return data, video.probe(data)
    except ValueError as e:
      return str(e)

  def _loaded(self, row: layouts.Row, loaded) -> tuple | None:
    """(row, bytes, info) for a usable clip; records an unusable one. Advances the progress."""
    if self.progress is not None:
      self.progress.update(1)
    if isinstance(loaded, str):
      self._skip(row, loaded)
      return None
    return (row, *loaded)

  def _first_usable(self, reader: Reader, rows: list[layouts.Row]) -> tuple[tuple | None, list[layouts.Row]]:
    """The first usable clip of `rows` (row, bytes, info) or None, and the rows after it."""
    for n, row in enumerate(rows):
      clip = self._loaded(row, self._load(reader, row))
      if clip is not None:
        return clip, rows[n + 1 :]
    return None, []

  def _generate_examples(self, reader: Reader, first: tuple, rows: list[layouts.Row]) -> Iterator:
    """Yields `first`, then each usable clip of `rows`, read and decoded in a few threads."""
    window = 2 * self.probe_threads  # clips in flight: bounds memory to ~window videos
    todo, pending = iter(rows), collections.deque()

    def example(row, data, info):
      return row.id, {
        "id": row.id,
        "caption": row.caption,
        "video": data,
        "num_frames": info.num_frames,
        "fps": info.fps,
        "height": info.height,
        "width": info.width,
      }

    yield example(*first)
    with concurrent.futures.ThreadPoolExecutor(self.probe_threads) as pool:

      def fill():
        for row in todo:
          pending.append((row, pool.submit(self._load, reader, row)))
          if len(pending) >= window:
            return

      fill()
      while pending:
        row, future = pending.popleft()
        clip = self._loaded(row, future.result())
        fill()
        if clip is not None:
          yield example(*clip)

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # self.data_path is the incomplete directory here: the report is renamed along with the data.
    report = "".join(json.dumps(row) + "\n" for row in sorted(self.skipped, key=lambda r: (r["file"] or "", r["row"])))
    files.write_text(self.data_path / SKIPPED_FILENAME, report)
