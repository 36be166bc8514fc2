"""How the scorer touches the file system: bounded reads, atomic writes, ids that become file names,
the --out lock.

Every input file (rubrics, tasks, results, prompt template, prompts) is opened with `open_regular`,
which refuses anything but a regular file (a FIFO would block for ever, `/dev/zero` never ends),
and read whole with `read_bounded`, which refuses a file over its cap (`InputTooLarge`).

Every file the scorer writes (results, journals' compaction, summaries, reports, PNGs) goes
through `write_atomic` (or `atomic_path` for writers that want a path, such as matplotlib):
a temporary file with a unique name in the same folder, fsync, `os.replace`, then fsync of the
folder, so that a reader sees the old file or the new one, never half of one, and two writers
never share a temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import stat
import tempfile
from typing import IO, Any, Iterator

ID_RE = re.compile(r"[A-Za-z0-9_.-]+")


class InputTooLarge(ValueError):
  """An input file larger than its cap (the message names the file and the cap)."""


def open_regular(path: str, what: str) -> IO[bytes]:
  """`path` opened for binary reading; ValueError naming `what` and `path` unless it is a regular
  file. Opened non-blocking, so that a FIFO without a writer is refused instead of waited on."""
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):
    os.close(fd)
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
    raise ValueError(f"{what} {path}: not a regular file ({kind}); give a file")
  return open(fd, "rb")


def read_bounded(path: str, what: str, limit: int) -> bytes:
  """The bytes of the regular file `path`; InputTooLarge when it holds more than `limit`."""
  with open_regular(path, what) as f:
    data = f.read(limit + 1)
  if len(data) > limit:
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
    raise InputTooLarge(f"{what} {path}: larger than {size}, the most the scorer reads; is it the right file?")
  return data


def _fsync_dir(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  except OSError:
    return  # Some file systems do not open folders; the replace itself has happened.
  try:
    os.fsync(fd)
  except OSError:
    pass  # fsync of a folder is refused on some file systems (and is moot on network ones).
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a unique temporary path beside `path`; on a clean exit it is fsynced and replaces
  `path`; on an error it is removed and `path` is left as it was."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_dir(folder)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: str, obj: Any, indent: int | None = 1) -> None:
  """Writes `obj` as JSON to `path` atomically (non-finite floats refused: use None)."""
  write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False) + "\n")


def check_ids(ids: list[tuple[str, Any]], what: str = "id") -> None:
  """Refuses ids that would become unsafe or clashing file names, naming every offending row.

  `ids` is [(where, id)], `where` naming the row (e.g. `prompts.jsonl:3`). A valid id matches
  `[A-Za-z0-9_.-]+` and does not start with a dot; each id appears once. Raises ValueError.
  """
  problems = []
  first: dict[str, str] = {}
  for where, value in ids:
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or value.startswith("."):
      problems.append(f"{where}: {what} {value!r} is not a safe file name ([A-Za-z0-9_.-]+, no leading dot)")
    elif value in first:
      problems.append(f"{where}: {what} {value!r} repeats {first[value]}")
    else:
      first[value] = where
  if problems:
    shown = "; ".join(problems[:10]) + (f"; ... (+{len(problems) - 10} more)" if len(problems) > 10 else "")
    raise ValueError(f"{len(problems)} bad {what}s, nothing computed: {shown}")


class LockHeld(ValueError):
  """Another process holds the lock (its pid and host are in the message)."""


class FileLock:
  """An exclusive `fcntl.flock` on `<path>`, which holds the holder's `pid host` while held.

  The lock belongs to the open file, so the kernel drops it when the holder dies (even by
  SIGKILL): a stale lock file is simply taken over. `wait` blocks until the holder is done.
  """

  def __init__(self, path: str, what: str, wait: bool = False):
    self.path, self.what = path, what
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
      holder = self._holder()
      os.close(self._fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise LockHeld(
          f"{what} is in use by pid {holder} (lock {path}); wait for it to finish, or pass --wait_for_lock"
        ) from None
      raise
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

  def _holder(self) -> str:
    try:
      text = os.pread(self._fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
      text = []
    return " on ".join(text[:2]) if text else "(unknown)"

  def release(self) -> None:
    if self._fd is not None:
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, 0)
      os.close(self._fd)  # Closing drops the flock; the file stays (removing it would race).
      self._fd = None

  def __enter__(self) -> "FileLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()
