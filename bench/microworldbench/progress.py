"""A small progress bar on stderr for long evaluation runs (no dependency)."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
  """`[#####.....] 120/459 scored 118 failed 2 | 3.1/s ETA 1m52s`, redrawn at most 5 times a second."""

  def __init__(self, total: int, desc: str = "", enabled: bool | None = None,
               stream: TextIO | None = None, width: int = 30):
    self.stream = stream or sys.stderr
    self.enabled = self.stream.isatty() if enabled is None else enabled
    self.total, self.desc, self.width = total, desc, width
    self.counts: dict[str, int] = {}
    self._done = 0
    self._start = self._last_draw = time.monotonic()
    self._lock = threading.Lock()

  def update(self, outcome: str) -> None:
    with self._lock:
      self._done += 1
      self.counts[outcome] = self.counts.get(outcome, 0) + 1
      now = time.monotonic()
      if self.enabled and (now - self._last_draw >= 0.2 or self._done == self.total):
        self._last_draw = now
        self._draw(now)

  def _draw(self, now: float) -> None:
    frac = self._done / self.total if self.total else 1.0
    bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
    rate = self._done / max(now - self._start, 1e-9)
    eta = (self.total - self._done) / rate if rate > 0 else 0.0
    counts = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
    self.stream.write(f"\r{self.desc}[{bar}] {self._done}/{self.total} {counts} | "
                      f"{rate:.1f}/s ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self.stream.write("\n")
      self.stream.flush()
