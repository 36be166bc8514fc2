"""Files and folders written safely: atomic writes (a reader sees the old file or the new one, never a
partial one), folders that say what they are, and ids that become file names.

Local paths: a uniquely named temp file in the same folder, fsync, `os.replace` over the target,
fsync of the folder. Remote paths (gs://): a uniquely named temp object, then a copy over the
target (GCS object writes are atomic per object) and the temp removed.

Every folder the project writes holds `artifact.json`, {"artifact": KIND} with KIND a key of `KINDS`
(run, checkpoint, diffusers); `folder_kind` reads it, or infers the kind of a folder written before it
from what the folder holds. `require_kind` is the one check a command makes before it reads or replaces
a folder; `write_folder` writes one whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
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


# ------------------------------------------------------------------------------ folders
MARKER = "artifact.json"
KINDS = {  # what a folder is, as error messages name it
  "run": "a training run's workdir",
  "checkpoint": "a converted checkpoint",
  "diffusers": "a diffusers model folder",
  "cache": "a latent cache",
  "weights": "a folder of PyTorch weights",  # kinds below are inferred only, never written
  "other": "a folder of other files",
  "file": "a file",
}


def folder_kind(path) -> str | None:
  """What `path` is (a key of KINDS), or None when it is absent or an empty folder. Its artifact.json
  says; a folder without one (written by an earlier version, or by other tools) is known by what it
  holds: checkpoints/ a run, params/ a converted checkpoint, *_latents/ a latent cache, config.json
  a run's config, a converted checkpoint's, or a diffusers / PyTorch model's."""
  path = epath.Path(path).expanduser()
  if not path.exists():
    return None
  if not path.is_dir():
    return "file"
  names = {p.name for p in path.iterdir()}
  if MARKER in names:
    kind = _json_object(path / MARKER).get("artifact")
    if kind not in KINDS:
      raise ValueError(f"{path / MARKER}: artifact={kind!r}, expected one of {sorted(KINDS)}")
    return kind
  if not names:
    return None
  if "checkpoints" in names:
    return "run"
  if "params" in names:
    return "checkpoint"
  if "dataset_info.json" in names or any(n.endswith("_latents") for n in names):
    return "cache"
  meta = _json_object(path / "config.json", strict=False) if "config.json" in names else {}
  if {"kind", "config"} <= set(meta):
    return "checkpoint"
  if {"train", "data", "model"} <= set(meta):
    return "run"
  if "_class_name" in meta:
    return "diffusers"
  if "config.json" in names or any(n.endswith((".safetensors", ".pth", ".pt", ".bin")) for n in names):
    return "weights"
  return "other"


def _json_object(path: epath.Path, strict: bool = True) -> dict:
  """The JSON object in `path`; ValueError naming the file if it is not one (`strict`), else {}."""
  try:  # a regular file of a sane size: a FIFO or a device named so would block or never end
    out = json.loads(path.read_text()) if path.is_file() and path.stat().length < 1 << 24 else None
  except (OSError, ValueError):
    out = None
  if not isinstance(out, dict):
    if strict:
      raise ValueError(f"{path}: not a JSON object")
    return {}
  return out


def require_kind(path, allowed: tuple, flag: str) -> str | None:
  """The kind of `path` (see `folder_kind`) after checking it is one of `allowed` (None: an absent or
  empty folder). Raises one error naming the flag, the folder, what it is and what was expected."""
  kind = folder_kind(path)
  if kind in allowed:
    return kind
  want = " or ".join(KINDS[k] if k else "a new folder" for k in allowed if k != "other")
  if kind is None:
    raise FileNotFoundError(f"{flag}={path}: no such folder, or an empty one; expected {want}")
  raise ValueError(f"{flag}={path}: {KINDS[kind]}, not {want}")


def check_apart(path, source, flag: str, what: str) -> None:
  """Raises ValueError when writing `path` could destroy `source` (`what`, e.g. "the --src checkpoint"):
  when they are the same, or either one lies inside the other."""
  a, b = (p if is_remote(p) else os.path.realpath(os.path.expanduser(p)) for p in map(os.fspath, (path, source)))
  a, b = a.rstrip("/"), b.rstrip("/")
  if a == b or a.startswith(b + "/"):
    raise ValueError(f"{flag}={path} is {'' if a == b else 'inside '}{what} ({source}); choose another {flag}")
  if b.startswith(a + "/"):
    raise ValueError(f"{flag}={path} holds {what} ({source}); choose another {flag}")


def mark(path, kind: str) -> None:
  """Writes path/artifact.json, saying the folder is a `kind` (a key of KINDS)."""
  write_text(epath.Path(path) / MARKER, json.dumps({"artifact": kind}) + "\n")


def write_folder(path, kind: str, fill: Callable, flag: str = "--out") -> None:
  """Writes the folder `path` whole or not at all, as a `kind`: `fill(tmp)` fills a temporary sibling
  (an epath.Path), which gets its artifact.json and then takes the place of `path`. An old `path` must be
  a `kind` (or empty); it is moved aside, the new folder renamed in, then the old one removed, so an
  interruption leaves the old folder or the new one (at worst under its hidden temporary name beside
  it), never a mix. gs:// has no folder rename: there `path` must be new, and is filled in place with
  its artifact.json written last."""
  existing = require_kind(path, (None, kind), flag)
  path = epath.Path(path).expanduser()
  if is_remote(path):
    if existing:
      raise ValueError(f"{flag}={path}: exists; gs:// folders are written once (remove it, or choose a new {flag})")
    fill(path)
    mark(path, kind)
    return
  path = epath.Path(os.path.abspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  tag = uuid.uuid4().hex[:12]
  tmp, old = (path.parent / f".{path.name}.{tag}.{end}" for end in ("tmp", "old"))
  tmp.mkdir()
  try:
    fill(tmp)
    mark(tmp, kind)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if path.exists():
    os.replace(path, old)
  os.replace(tmp, path)
  fsync_folder(os.fspath(path.parent))
  shutil.rmtree(old, ignore_errors=True)


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
      f"{what}: {len(rows)} bad (allowed: [A-Za-z0-9_.-]+, no leading dot, no duplicates): "
      + "; ".join(rows[:10])
      + (" ..." if len(rows) > 10 else "")
    )
  return ids
