"""Results files in the official per-video format, written atomically and resumable.

A results file is a JSON list, one entry per video:
  {"index": 42, "video_path": ".../42.mp4",
   "scientific_eval": {"raw_response": "...", "parsed_result": {"scores": [1, 0, ...], "reasoning": "..."}},
   "visual_eval": {...}, "instruction_eval": {...},
   "status": {"scientific": {"state": "scored" | "failed", "reason": ..., "requests": 2,
                             "criteria": [1, 2, 3, 4, 5]}, ...},
   "judge_model": "gpt-4o"}
A failed dimension keeps `parsed_result: null` (the official aggregator drops such a task) and says
why in `status`. While a run is going, every finished item is also appended to `<file>.journal`
(one JSON line each) so that a killed run loses nothing; opening the store replays the journal.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from microworldbench.rubrics import DIMENSIONS

EVAL_KEY = {dim: f"{dim}_eval" for dim in DIMENSIONS}


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary name beside `path`, then renames it over `path`."""
  tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_results(path: str) -> list[dict[str, Any]]:
  """Reads a results file (ours or the official evaluator's); a ValueError names what is wrong."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); it is left untouched") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of per-video results, got {type(data).__name__}")
  for i, item in enumerate(data):
    if not isinstance(item, dict) or not isinstance(item.get("index"), int):
      raise ValueError(f"{path}: entry {i} has no integer 'index'")
  return data


class ResultStore:
  """Per-video results keyed by task index; `record` is thread-safe and journaled at once."""

  def __init__(self, path: str):
    self.path = path
    self.journal_path = path + ".journal"
    self.items: dict[int, dict[str, Any]] = {}
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
      for item in load_results(path):
        self.items[item["index"]] = item
    if os.path.exists(self.journal_path):
      self._replay_journal()
    self.save()
    self._journal = open(self.journal_path, "a", encoding="utf-8")

  def _replay_journal(self) -> None:
    with open(self.journal_path, encoding="utf-8") as f:
      for line in f:
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a kill: that item is simply redone.
        self._apply(entry)

  def _apply(self, entry: dict[str, Any]) -> None:
    item = self.items.setdefault(entry["index"], {"index": entry["index"]})
    item["video_path"] = entry["video_path"]
    item[EVAL_KEY[entry["dimension"]]] = entry["eval"]
    item.setdefault("status", {})[entry["dimension"]] = entry["status"]
    item["judge_model"] = entry["judge_model"]

  def record(self, index: int, video_path: str, dimension: str, evaluation: dict[str, Any],
             status: dict[str, Any], judge_model: str) -> None:
    entry = {"index": index, "video_path": video_path, "dimension": dimension, "eval": evaluation,
             "status": status, "judge_model": judge_model}
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    with self._lock:
      self._apply(entry)
      self._journal.write(line)
      self._journal.flush()

  def _ordered(self) -> list[dict[str, Any]]:
    out = []
    for index in sorted(self.items):
      item = self.items[index]
      keys = ["index", "video_path", *EVAL_KEY.values(), "status", "judge_model"]
      ordered = {k: item[k] for k in keys if k in item}
      if isinstance(ordered.get("status"), dict):
        status = ordered["status"]
        ordered["status"] = {d: status[d] for d in (*DIMENSIONS, *status) if d in status}
      ordered.update({k: v for k, v in item.items() if k not in ordered})
      out.append(ordered)
    return out

  def save(self) -> None:
    """Writes the whole file atomically, then empties the journal (replaying it again is harmless)."""
    with self._lock:
      write_json_atomic(self.path, self._ordered())
      if getattr(self, "_journal", None) is not None:
        self._journal.truncate(0)
        self._journal.seek(0)
      elif os.path.exists(self.journal_path):
        os.remove(self.journal_path)

  def close(self) -> None:
    self.save()
    with self._lock:
      self._journal.close()
      os.remove(self.journal_path)
