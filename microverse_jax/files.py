"""Files written safely: atomic writes (a reader sees the old file or the new one, never a partial
one) and ids that become file names.

Local paths: a uniquely named temp file in the same folder, fsync, `os.replace` over the target,
fsync of the folder. Remote paths (gs://): a uniquely named temp object, then a copy over the
target (GCS object writes are atomic per object) and the temp removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from typing import Callable, Iterable

from etils import epath

SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def write_bytes(path, data: bytes) -> None:
  """Replaces (or creates) `path` with `data` atomically; creates the parent folder."""
  write_with(path, lambda f: f.write(data))


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_with(path, fill: Callable) -> None:
  """Calls fill(binary file) on a temp file beside `path`, then moves it over `path`."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
      with tmp.open("wb") as f:
        fill(f)
      tmp.copy(path, overwrite=True)
    finally:
      with contextlib.suppress(Exception):
        tmp.unlink(missing_ok=True)
    return
  folder = os.fspath(path.parent)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      fill(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.fspath(path))
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  fsync_folder(folder)


def fsync_folder(folder: str) -> None:
  """Makes a rename inside `folder` durable (no-op where folders can't be opened)."""
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def check_ids(ids: Iterable, what: str = "id") -> list[str]:
  """The ids as strings, after checking each can be a file name inside an output folder:
  [A-Za-z0-9_.-]+ with no leading dot, and no duplicates. One ValueError names every bad row."""
  ids = [str(i) for i in ids]
  bad = [f"row {n}: {i!r}" for n, i in enumerate(ids, 1) if not SAFE_ID.fullmatch(i) or i.startswith(".")]
  seen, dup = set(), []
  for n, i in enumerate(ids, 1):
    if i in seen:
      dup.append(f"row {n}: {i!r} (duplicate)")
    seen.add(i)
  if bad or dup:
    rows = bad + dup
    raise ValueError(
      f"{len(rows)} bad {what}s (allowed: [A-Za-z0-9_.-]+, no leading dot, no duplicates): "
      + "; ".join(rows[:10])
      + (" ..." if len(rows) > 10 else "")
    )
  return ids
