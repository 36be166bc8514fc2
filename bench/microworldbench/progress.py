"""Progress with a total and an ETA for the long commands (evaluate, aggregate, physics), on stderr.

On a terminal: a tqdm bar when tqdm is installed (it is optional here), else a small bar of our
own. Elsewhere (a log file, CI): one plain line every `every` seconds and one at the end, e.g.
`judging 120/459 (26%) failed 2 scored 118 | 3.1/s ETA 1m52s`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
  """`update(outcome)` once per finished unit; `close()` at the end. Thread-safe.

  `enabled`: None picks by the stream (a bar on a terminal, periodic lines elsewhere); True
  forces a bar, False shows nothing.
  """

  def __init__(
    self,
    total: int,
    desc: str = "",
    enabled: bool | None = None,
    stream: TextIO | None = None,
    width: int = 30,
    unit: str = "it",
    every: float = 30.0,
  ):
    self.stream = stream or sys.stderr
    tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.mode = "off" if enabled is False else "bar" if (enabled or tty) else "lines"
    self.total, self.desc, self.width, self.unit, self.every = total, desc, width, unit, every
    self.counts: dict[str, int] = {}
    self._done = 0
    self._start = self._last_draw = time.monotonic()
    self._lock = threading.Lock()
    self._tqdm = None
    if self.mode == "bar" and tty:
      try:
        from tqdm import tqdm
      except ImportError:
        pass
      else:
        self._tqdm = tqdm(total=total, desc=desc.strip() or None, unit=unit, file=self.stream, dynamic_ncols=True)

  def update(self, outcome: str) -> None:
    with self._lock:
      self._done += 1
      self.counts[outcome] = self.counts.get(outcome, 0) + 1
      now = time.monotonic()
      last = self._done == self.total
      if self._tqdm is not None:
        if len(self.counts) > 1 or outcome not in ("done", "ok"):
          self._tqdm.set_postfix_str(self._counts(), refresh=False)
        self._tqdm.update(1)
      elif self.mode == "bar" and (now - self._last_draw >= 0.2 or last):
        self._last_draw = now
        self._draw(now)
      elif self.mode == "lines" and (now - self._last_draw >= self.every or last):
        self._last_draw = now
        self.stream.write(self._line(now) + "\n")
        self.stream.flush()

  def _counts(self) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))

  def _rate_eta(self, now: float) -> str:
    rate = self._done / max(now - self._start, 1e-9)
    eta = (self.total - self._done) / rate if rate > 0 else 0.0
    return f"{rate:.1f} {self.unit}/s ETA {_eta(eta)}"

  def _line(self, now: float) -> str:
    pct = 100 * self._done // self.total if self.total else 100
    return f"{self.desc}{self._done}/{self.total} ({pct}%) {self._counts()} | {self._rate_eta(now)}"

  def _draw(self, now: float) -> None:
    frac = self._done / self.total if self.total else 1.0
    bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
    self.stream.write(f"\r{self.desc}[{bar}] {self._done}/{self.total} {self._counts()} | {self._rate_eta(now)}")
    self.stream.flush()

  def close(self) -> None:
    if self._tqdm is not None:
      self._tqdm.close()
    elif self.mode == "bar":
      self.stream.write("\n")
      self.stream.flush()


def add_progress_flags(parser) -> None:
  """--progress / --no_progress (tri-state: None lets `Progress` decide by the terminal)."""
  parser.add_argument(
    "--progress",
    action="store_true",
    default=None,
    help="show progress (default: a bar when stderr is a terminal, else a line every 30 s)",
  )
  parser.add_argument(
    "--no_progress", "--no-progress", dest="progress", action="store_false", default=None, help="no progress output"
  )
