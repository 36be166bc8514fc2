"""TFDS builder for MicroSim-10K (manual download) writing ArrayRecord.

The manual directory is laid out like the official release: one metadata file (JSON array, JSONL or
CSV) of rows {"id": optional, "video": path relative to the manual dir, "prompt": caption} beside
the video files. Videos are stored as the original encoded bytes (no re-encode) with the frame count,
fps and size found by decoding every frame.

Bad input never stops the build: rows without a prompt, video paths that escape the manual dir
(absolute or `..`), missing, unreadable or truncated videos and duplicate ids are skipped and listed
in `skipped.jsonl` beside the dataset files, one JSON object per row: {"row", "id", "video", "reason"}.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import posixpath

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data import clip_features, id_hash_fraction
from microverse_jax import video

METADATA_SUFFIXES = (".json", ".jsonl", ".csv")
SKIPPED_FILENAME = "skipped.jsonl"


@dataclasses.dataclass(frozen=True)
class _Clip:
  row: int
  id: str
  video: str
  caption: str
  info: video.VideoInfo


def find_metadata_file(manual_dir: epath.Path, name: str | None = None) -> epath.Path:
  """The metadata file: `name` if given, else the one top-level .json/.jsonl/.csv file."""
  if name:
    path = manual_dir / name
    if not path.exists():
      raise ValueError(f"metadata file {path} does not exist")
    return path
  if not manual_dir.is_dir():
    raise ValueError(f"manual_dir {manual_dir} does not exist or is not a directory")
  found = sorted(p for p in manual_dir.iterdir() if p.suffix.lower() in METADATA_SUFFIXES and p.is_file())
  if len(found) != 1:
    raise ValueError(f"expected exactly one metadata file ({', '.join(METADATA_SUFFIXES)}) in {manual_dir}, "
                     f"found {[p.name for p in found]}; pass its name with --metadata")
  return found[0]


def read_metadata(path: epath.Path) -> list:
  """Rows of a JSON array, JSONL or CSV metadata file (JSONL lines that fail to parse become None)."""
  text = path.read_text(encoding="utf-8")
  suffix = path.suffix.lower()
  if suffix == ".csv":
    return list(csv.DictReader(io.StringIO(text)))
  if suffix == ".json" and text.lstrip().startswith("["):
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"metadata file {path} is not valid JSON: {e}") from e
    return rows
  rows = []
  for line in text.splitlines():
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        rows.append(None)
  return rows


def safe_relative_path(value: object) -> str | None:
  """The normalised relative posix path, or None if it is not a string or escapes its directory."""
  if not isinstance(value, str) or not value.strip():
    return None
  value = value.strip().replace("\\", "/")
  if value.startswith("/") or os.path.isabs(value) or (len(value) > 1 and value[1] == ":"):
    return None
  normalised = posixpath.normpath(value)
  if normalised == ".." or normalised.startswith("../") or normalised == ".":
    return None
  return normalised


class Microsim10k(tfds.core.GeneratorBasedBuilder):
  """MicroSim-10K: expert-verified microscopic-process videos with ~150-word captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded videos as stored, deterministic hash-of-id validation split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the gated Hugging Face dataset wangrongsheng/MicroVerse (MicroSim-10K) and pass its
  directory as --manual_dir: a metadata file (JSON array, JSONL or CSV) of
  {"id": optional, "video": relative/path.mp4, "prompt": caption} beside the videos.
  """

  def __init__(self, *, validation_fraction: float = 0.05, metadata_file: str | None = None,
               probe_threads: int | None = None, **kwargs):
    if not 0.0 <= validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    self.validation_fraction = validation_fraction
    self.metadata_file = metadata_file
    self.probe_threads = probe_threads or min(8, (os.cpu_count() or 1) * 2)
    self.skipped: list[dict] = []
    super().__init__(**{"file_format": "array_record", **kwargs})

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=clip_features(),
        homepage="https://huggingface.co/datasets/wangrongsheng/MicroVerse",
        metadata=tfds.core.MetadataDict(validation_fraction=self.validation_fraction),
    )

  def _skip(self, row: int, clip_id: object, video_path: object, reason: str) -> None:
    self.skipped.append({"row": row, "id": clip_id if isinstance(clip_id, str) else None,
                         "video": video_path if isinstance(video_path, str) else None, "reason": reason})

  def _probe(self, manual_dir: epath.Path, relative: str) -> video.VideoInfo | str:
    """VideoInfo for a clip, or the reason it is unusable."""
    path = manual_dir / relative
    try:
      data = path.read_bytes()
    except FileNotFoundError:
      return "missing file"
    except (OSError, IsADirectoryError) as e:
      return f"unreadable file: {e}"
    try:
      return video.probe(data)
    except ValueError as e:
      return str(e)

  def _usable_clips(self, manual_dir: epath.Path) -> list[_Clip]:
    rows = read_metadata(find_metadata_file(manual_dir, self.metadata_file))
    candidates = []
    for i, row in enumerate(rows):
      if not isinstance(row, dict):
        self._skip(i, None, None, "row is not an object")
        continue
      raw_video, prompt = row.get("video"), row.get("prompt")
      relative = safe_relative_path(raw_video)
      clip_id = str(row["id"]) if row.get("id") not in (None, "") else relative
      if not isinstance(prompt, str) or not prompt.strip():
        self._skip(i, clip_id, raw_video, "missing prompt")
      elif relative is None:
        self._skip(i, clip_id, raw_video, "video path missing or escapes manual_dir")
      else:
        candidates.append((i, clip_id, relative, prompt.strip()))
    with concurrent.futures.ThreadPoolExecutor(self.probe_threads) as pool:
      probes = list(pool.map(lambda c: self._probe(manual_dir, c[2]), candidates))
    clips, seen = [], set()
    for (i, clip_id, relative, prompt), info in zip(candidates, probes):
      if isinstance(info, str):
        self._skip(i, clip_id, relative, info)
      elif clip_id in seen:
        self._skip(i, clip_id, relative, "duplicate id")
      else:
        seen.add(clip_id)
        clips.append(_Clip(row=i, id=clip_id, video=relative, caption=prompt, info=info))
    return clips

  def _split_generators(self, dl_manager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    self.skipped = []
    clips = self._usable_clips(manual_dir)
    if not clips:
      raise ValueError(f"no usable clips in {manual_dir}; skipped rows: {self.skipped[:20]}")
    fractions = [id_hash_fraction(c.id) for c in clips]
    validation = {c.id for c, f in zip(clips, fractions) if f < self.validation_fraction}
    if not validation and len(clips) >= 2 and self.validation_fraction > 0:
      validation = {min(zip(fractions, (c.id for c in clips)))[1]}  # smallest hash: never empty
    logging.info("microsim10k: %d clips (%d validation), %d rows skipped",
                 len(clips), len(validation), len(self.skipped))
    splits = {"train": [c for c in clips if c.id not in validation],
              "validation": [c for c in clips if c.id in validation]}
    return {name: self._generate_examples(manual_dir, rows) for name, rows in splits.items() if rows}

  def _generate_examples(self, manual_dir: epath.Path, clips: list[_Clip]):
    for clip in clips:
      yield clip.id, {
          "id": clip.id, "caption": clip.caption, "video": (manual_dir / clip.video).read_bytes(),
          "num_frames": clip.info.num_frames, "fps": clip.info.fps,
          "height": clip.info.height, "width": clip.info.width,
      }

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # self.data_path is the incomplete directory here: the report is renamed along with the data.
    report = "".join(json.dumps(row) + "\n" for row in sorted(self.skipped, key=lambda r: r["row"]))
    tmp = self.data_path / f".{SKIPPED_FILENAME}.tmp"
    tmp.write_text(report)
    tmp.rename(self.data_path / SKIPPED_FILENAME)
