"""The metadata layouts of MicroSim-10K a user may hold, found and read into rows.

| layout               | metadata files                                  | video column | caption column            |
|----------------------|-------------------------------------------------|--------------|---------------------------|
| official (DiffSynth) | one top-level .json / .jsonl / .csv / .parquet  | `video`      | `prompt`                  |
| Hugging Face folder  | `metadata.jsonl` / `.csv` / `.parquet`          | `file_name`  | `text`/`caption`/`prompt` |
| Hugging Face splits  | `train/metadata.jsonl`, `validation/...`, ...   | `file_name`  | as above                  |
| shards               | `metadata-00000-of-00004.jsonl`, ... or `data/train-*.parquet` | either | as above |

Autodetection, in order: files named `metadata*` anywhere (hidden folders skipped), else `*.parquet`
anywhere, else the one top-level .json/.jsonl/.csv/.parquet file. `--metadata` (a name or glob relative
to the manual dir) overrides it; `--video_key`, `--caption_key` and `--id_key` override the columns.
Video paths are relative to the folder of their metadata file (both conventions put them there) and
must stay inside the manual dir. A split comes from a `split` column, else from the metadata file's
path (a folder or file-name token `train`, `validation`/`valid`/`val`/`dev`, `test`), else none.

Rows are never fatal: a line that is not UTF-8 or not JSON, a row that is not an object, a CSV field
over 128 KB (its own row only), text with a lone surrogate, a NUL byte in a path, each becomes a `Row`
with a `reason`. A missing id (null, blank, NaN) is the video path, as an absent id column. A file that can't be read
or lacks the columns is fatal before anything is built (an unknown layout: the error names the files
seen and the flags to pass).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import posixpath
import re

from etils import epath

from microverse_jax.datasets.microsim10k.safe_files import Reader, Unusable, safe_relative_path

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
VIDEO_KEYS = ("video", "file_name")
CAPTION_KEYS = ("prompt", "text", "caption")
ID_KEYS = ("id",)
SPLIT_KEY = "split"
SPLITS = {
  "train": "train",
  "training": "train",
  "validation": "validation",
  "valid": "validation",
  "val": "validation",
  "dev": "validation",
  "test": "test",
  "testing": "test",
}
METADATA_CAP = 1024 << 20  # bytes; a metadata file larger than 1 GiB is not MicroSim-10K
CSV_FIELD_CAP = 128 << 10  # characters; a CSV field longer than this (csv's own default limit) skips its row
FLAGS_HINT = (
  "pass --metadata=NAME_OR_GLOB (relative to --manual_dir) and, where the columns differ, "
  "--video_key, --caption_key, --id_key"
)


@dataclasses.dataclass(frozen=True)
class Keys:
  video: str | None = None
  caption: str | None = None
  id: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
  """One metadata row: usable (reason None) or skipped with a reason."""

  file: str
  row: int
  id: str | None = None
  video: str | None = None  # relative to the manual dir, normalised
  caption: str | None = None
  split: str | None = None  # published split, or None for the hash split
  reason: str | None = None

  def skipped(self) -> dict:
    return {"file": self.file, "row": self.row, "id": self.id, "video": self.video, "reason": self.reason}


@dataclasses.dataclass
class MetadataFile:
  path: str  # relative to the manual dir
  columns: list[str]
  keys: Keys
  split: str | None
  rows: list[Row]

  def describe(self) -> str:
    split = f"column '{SPLIT_KEY}'" if SPLIT_KEY in self.columns else f"'{self.split}' (path)" if self.split else "hash"
    return (
      f"{self.path}: {len(self.rows)} rows; columns {self.columns}; video={self.keys.video!r} "
      f"caption={self.keys.caption!r} id={self.keys.id!r}; split {split}"
    )


def _listing(root: epath.Path) -> list[str]:
  """Relative posix paths of the files below root, hidden folders and files skipped."""
  found = []
  if "://" not in os.fspath(root):
    for folder, dirs, files in os.walk(os.fspath(root)):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      rel = os.path.relpath(folder, os.fspath(root))
      found += [
        posixpath.normpath(posixpath.join(rel.replace(os.sep, "/"), f)) for f in sorted(files) if not f.startswith(".")
      ]
    return found
  return sorted(
    str(p.relative_to(root))
    for p in root.rglob("*")
    if not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file()
  )


def find_metadata(root: epath.Path, pattern: str | None = None) -> list[str]:
  """The metadata files (relative paths): matches of `pattern`, else the autodetected ones."""
  if not root.is_dir():
    raise ValueError(f"manual_dir {root} does not exist or is not a directory")
  files = _listing(root)
  if pattern:
    try:
      found = sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    except (NotImplementedError, ValueError) as e:  # an absolute pattern, or one leaving the manual dir
      raise ValueError(f"--metadata={pattern!r} must be a name or glob inside {root}: {e}") from None
    if any(safe_relative_path(f) is None for f in found):
      raise ValueError(f"--metadata={pattern!r} must be a name or glob inside {root}, not leave it")
    if not found:
      raise ValueError(f"--metadata={pattern!r} matches no file in {root}; files there: {_sample(files)}")
    return found
  candidates = [f for f in files if posixpath.splitext(f)[1].lower() in SUFFIXES]
  named = [f for f in candidates if posixpath.basename(f).lower().startswith("metadata")]
  parquet = [f for f in candidates if f.lower().endswith(".parquet")]
  top = [f for f in candidates if "/" not in f]
  for found in (named, parquet):
    if found:
      return found
  if len(top) == 1:
    return top
  raise ValueError(
    f"unknown MicroSim-10K layout in {root}: "
    + (
      f"several top-level metadata files {top} and none named metadata*"
      if top
      else "no metadata file (.json, .jsonl, .csv, .parquet)"
    )
    + f"; files there: {_sample(files)}; {FLAGS_HINT}"
  )


def _sample(files: list[str], n: int = 12) -> str:
  return str(files[:n]) + (f" and {len(files) - n} more" if len(files) > n else "")


def path_split(path: str) -> str | None:
  """The split a metadata path publishes: a folder named like one, else a file-name token."""
  parts = path.lower().split("/")
  for part in parts[:-1]:
    if part in SPLITS:
      return SPLITS[part]
  for token in re.split(r"[-._ ]", parts[-1]):
    if token in SPLITS:
      return SPLITS[token]
  return None


def parse_rows(path: str, data: bytes) -> list[dict | str]:
  """Rows of a metadata file: dicts, or the reason a row is unusable."""
  suffix = posixpath.splitext(path)[1].lower()
  if suffix == ".parquet":
    try:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f"{path} is Parquet metadata: reading it needs pyarrow (pip install pyarrow)") from None
    try:
      return pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as e:  # pylint: disable=broad-except  # pyarrow's errors vary by version
      raise ValueError(f"metadata file {path} is not readable Parquet: {e}") from e
  if suffix == ".csv":
    return _parse_csv(data.decode("utf-8-sig", errors="surrogateescape"))
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  if suffix == ".json" and data.lstrip().startswith(b"["):
    try:
      rows = json.loads(data.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
      raise ValueError(f"metadata file {path} is not valid JSON: {e}") from e
    return rows if isinstance(rows, list) else [rows]
  rows = []
  for line in data.split(b"\n"):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line.decode("utf-8")))
    except UnicodeDecodeError:
      rows.append("metadata line is not valid UTF-8")
    except json.JSONDecodeError:
      rows.append("metadata line is not valid JSON")
  return rows


def _parse_csv(text: str) -> list[dict | str]:
  """Rows of a CSV file. Every field is read whole (csv's limit would stop mid-field, and the rest of a
  quoted multi-line field would be read as rows): a field over CSV_FIELD_CAP skips exactly its own row."""
  limit = csv.field_size_limit()
  csv.field_size_limit(max(limit, len(text) + 1))
  try:
    reader, rows = csv.DictReader(io.StringIO(text, newline="")), []
    while True:
      try:
        row = next(reader)
      except StopIteration:
        return rows
      except csv.Error as e:
        rows.append(f"CSV row not readable: {e}")
        continue
      long = _oversized_field(row)
      rows.append(row if long is None else f"CSV field {long!r} longer than {CSV_FIELD_CAP} characters")
  finally:
    csv.field_size_limit(limit)


def _oversized_field(row: dict) -> str | None:
  """The column of the first field of `row` over CSV_FIELD_CAP (extra fields: column None), or None."""
  for key, value in row.items():
    if any(isinstance(v, str) and len(v) > CSV_FIELD_CAP for v in (value if isinstance(value, list) else [value])):
      return key
  return None


def _pick(columns: list[str], flag: str | None, defaults: tuple[str, ...]) -> str | None:
  if flag:
    return flag if flag in columns else None
  return next((k for k in defaults if k in columns), None)


def _valid_text(value: str) -> bool:
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _missing(value: object) -> bool:
  """An absent id: None (a Parquet null), blank, or NaN (a pandas-written gap); the path stands in for it."""
  return (
    value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))
  )


def row_path(folder: str, value: object) -> tuple[str | None, str | None]:
  """(path relative to the manual dir, None) for a video value relative to `folder`, or (None, reason)."""
  if not isinstance(value, str) or not value.strip():
    return None, "video path missing"
  if "\x00" in value:
    return None, "NUL byte in video path"
  if not _valid_text(value):
    return None, "video path is not valid UTF-8 (lone surrogate)"
  value = value.strip().replace("\\", "/")
  if value.startswith("/") or os.path.isabs(value) or (len(value) > 1 and value[1] == ":"):
    return None, "video path escapes manual_dir (absolute path)"
  joined = safe_relative_path(posixpath.join(folder, value))
  if joined is None:
    return None, "video path escapes manual_dir"
  return joined, None


def _convert(file: str, n: int, raw: dict | str, keys: Keys, split: str | None) -> Row:
  """A Row from one parsed row: usable, or with the first reason it is not."""
  if isinstance(raw, str):
    return Row(file, n, reason=raw)
  if not isinstance(raw, dict):
    return Row(file, n, reason="row is not an object")
  raw_video = raw.get(keys.video)
  video, reason = row_path(posixpath.dirname(file), raw_video)
  raw_id = raw.get(keys.id) if keys.id else None
  clip_id = video if _missing(raw_id) else str(raw_id).strip()
  caption = raw.get(keys.caption)
  row_split = raw.get(SPLIT_KEY) if raw.get(SPLIT_KEY) not in (None, "") else split
  row_split = str(row_split).strip().lower() if row_split is not None else None
  if reason is None and clip_id is not None and not _valid_text(clip_id):
    reason = "id is not valid UTF-8 (lone surrogate)"
  if reason is None and (not isinstance(caption, str) or not caption.strip()):
    reason = "missing prompt"
  if reason is None and not _valid_text(caption):
    reason = "caption is not valid UTF-8 (lone surrogate)"
  if reason is None and row_split is not None and row_split not in SPLITS:
    reason = f"unknown split {row_split!r} (expected train, validation or test)"
  if reason is not None:
    return Row(file, n, id=clip_id, video=raw_video if isinstance(raw_video, str) else None, reason=reason)
  return Row(
    file,
    n,
    id=clip_id,
    video=video,
    caption=caption.strip(),
    split=SPLITS[row_split] if row_split is not None else None,
  )


def read_metadata(reader: Reader, path: str, keys: Keys = Keys()) -> MetadataFile:
  """Reads one metadata file (relative to reader.root) into rows; ValueError when it is unusable."""
  try:
    data = reader.read(path, max_bytes=METADATA_CAP)
  except Unusable as e:
    raise ValueError(f"metadata file {path} in {reader.root}: {e}") from None
  raw = parse_rows(path, data)
  columns = sorted({k for r in raw if isinstance(r, dict) for k in r if isinstance(k, str)})
  picked = Keys(
    video=_pick(columns, keys.video, VIDEO_KEYS),
    caption=_pick(columns, keys.caption, CAPTION_KEYS),
    id=_pick(columns, keys.id, ID_KEYS),
  )
  if raw and (picked.video is None or picked.caption is None or (keys.id and picked.id is None)):
    missing = [
      f"{what} ({flag or '|'.join(defaults)})"
      for what, got, flag, defaults in (
        ("video", picked.video, keys.video, VIDEO_KEYS),
        ("caption", picked.caption, keys.caption, CAPTION_KEYS),
        ("id", picked.id if keys.id else "-", keys.id, ID_KEYS),
      )
      if got is None
    ]
    raise ValueError(
      f"unknown MicroSim-10K layout: metadata file {path} ({len(raw)} rows) has columns {columns}, "
      f"none for {', '.join(missing)}; {FLAGS_HINT}"
    )
  split = path_split(path)
  rows = [_convert(path, n, r, picked, split) for n, r in enumerate(raw)]
  return MetadataFile(path=path, columns=columns, keys=picked, split=split, rows=rows)
