"""Reading a file named by the release (a metadata file or a video) without escaping or hanging.

A relative path is joined to the manual dir and resolved (every symlink followed). The result must
be a regular file (`S_ISREG`: a FIFO, socket or device named `.mp4` would block or never end) of at
most `max_bytes`, and it must land inside the manual dir. Two exceptions for links that land outside:
  - inside a Hugging Face hub cache, `<cache>/datasets--OWNER--NAME/snapshots/REV/...` links into
    `<cache>/datasets--OWNER--NAME/blobs/`: such targets are accepted without a flag;
  - `follow_symlinks=True` (`--follow_symlinks`) accepts any target.
Each file is opened once with O_NONBLOCK and re-checked on the open descriptor, so swapping a FIFO
in after the check cannot hang the read. Remote paths (gs://) have no links or FIFOs: only the size cap.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat

from etils import epath

MB = 1 << 20


class Unusable(Exception):
  """A file that can't be used; str(e) is the reason written to skipped.jsonl."""


def _is_remote(path) -> bool:
  return "://" in os.fspath(path)


def _within(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def hub_blobs_dir(real_root: str) -> str | None:
  """`<repo>/blobs` when `real_root` is inside `<repo>/snapshots/<rev>` of a Hugging Face hub cache."""
  parts = real_root.split(os.sep)
  for i in range(len(parts) - 2, 0, -1):
    if parts[i] == "snapshots" and parts[i - 1].split("--")[0] in ("datasets", "models", "spaces"):
      return os.sep.join(parts[:i] + ["blobs"])
  return None


@dataclasses.dataclass(frozen=True)
class Reader:
  """Reads files below `root` under the rules above."""

  root: epath.Path
  max_bytes: int
  follow_symlinks: bool = False

  @property
  def real_root(self) -> str:
    return os.path.realpath(os.fspath(self.root))

  def resolve(self, relative: str) -> str:
    """The real local path of `relative`, or Unusable when it leaves the manual dir."""
    if "\x00" in relative:
      raise Unusable("NUL byte in path")
    root = self.real_root
    real = os.path.realpath(os.path.join(root, relative))
    if _within(real, root) or self.follow_symlinks:
      return real
    blobs = hub_blobs_dir(root)
    if blobs and _within(real, blobs):
      return real
    raise Unusable("symlink target outside manual_dir (pass --follow_symlinks to follow it)")

  def read(self, relative: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the file at `relative` (a normalised path inside the root), or Unusable."""
    cap = self.max_bytes if max_bytes is None else max_bytes
    if _is_remote(self.root):
      if "\x00" in relative:
        raise Unusable("NUL byte in path")
      try:
        with (self.root / relative).open("rb") as f:
          data = f.read(cap + 1)
      except FileNotFoundError:
        raise Unusable("missing file") from None
      except (OSError, IsADirectoryError) as e:
        raise Unusable(f"unreadable file: {e}") from None
      return _capped(data, cap)
    real = self.resolve(relative)
    try:
      st = os.stat(real)
      if not stat.S_ISREG(st.st_mode):
        raise Unusable("not a regular file")
      if st.st_size > cap:
        raise Unusable(f"file too large: {st.st_size} bytes > cap {cap} bytes ({cap / MB:g} MB)")
      fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
      raise Unusable("missing file") from None
    except OSError as e:
      raise Unusable(f"unreadable file: {e.strerror or e}") from None
    try:
      if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise Unusable("not a regular file")
      chunks, size = [], 0
      while size <= cap:
        chunk = os.read(fd, min(cap + 1 - size, 16 * MB))
        if not chunk:
          break
        chunks.append(chunk)
        size += len(chunk)
    except OSError as e:
      raise Unusable(f"unreadable file: {e.strerror or e}") from None
    finally:
      os.close(fd)
    return _capped(b"".join(chunks), cap)


def _capped(data: bytes, cap: int) -> bytes:
  if len(data) > cap:
    raise Unusable(f"file too large: more than cap {cap} bytes ({cap / MB:g} MB)")
  return data


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
