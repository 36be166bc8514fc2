"""Results files in the official per-video format, written atomically and resumable.

A results file is a JSON list, one entry per video:
  {"index": 42, "video_path": ".../42.mp4",
   "scientific_eval": {"raw_response": "...", "parsed_result": {"scores": [1, 0, ...], "reasoning": "..."}},
   "visual_eval": {...}, "instruction_eval": {...},
   "status": {"scientific": {"state": "scored" | "failed", "reason": ..., "requests": 2,
                             "criteria": [1, 2, 3, 4, 5]}, ...},
   "judge_model": "gpt-4o", "protocol": "default" | "official"}
A failed dimension keeps `parsed_result: null` (the official aggregator drops such a task) and says
why in `status`. While a run is going, every finished item is also appended to `<file>.journal`
(one JSON line each) so that a killed run loses nothing; opening the store replays the journal,
skipping (and counting) any line that is not a well-formed entry. A file holding one task twice is
refused (the official evaluator writes each index once). One process at a time writes a
results file: `evaluate` holds `<file>.lock` (see `files.FileLock`) while its store is open.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from microworldbench.files import open_regular, read_bounded, write_json_atomic
from microworldbench.rubrics import DIMENSIONS

MAX_BYTES = 256 << 20  # Cap on a results file (459 tasks judged take a few MB).
EVAL_KEY = {dim: f"{dim}_eval" for dim in DIMENSIONS}
__all__ = [
  "EVAL_KEY",
  "ResultStore",
  "journal_entry_problem",
  "load_results",
  "name_tasks",
  "status_problem",
  "write_json_atomic",
]


def journal_entry_problem(entry: Any) -> str | None:
  """Why a journal line cannot be replayed, or None when it can."""
  if not isinstance(entry, dict):
    return f"a JSON {type(entry).__name__}, not an object"
  index = entry.get("index")
  if isinstance(index, bool) or not isinstance(index, int):
    return f"index {index!r} is not an integer"
  if entry.get("dimension") not in DIMENSIONS:
    return f"unknown dimension {entry.get('dimension')!r}"
  for key, kind in (("eval", dict), ("status", dict), ("video_path", str), ("judge_model", str)):
    if not isinstance(entry.get(key), kind):
      return f"{key!r} is missing or not a {kind.__name__}"
  if not isinstance(entry.get("protocol", ""), str):
    return "'protocol' is not a string"
  return status_problem({entry["dimension"]: entry["status"]})


def name_tasks(indices: list[int], n: int = 10) -> str:
  """'task 3' or 'tasks 1, 2, 5', the first `n` and how many more."""
  more = f" ... (+{len(indices) - n})" if len(indices) > n else ""
  return f"task{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices[:n]))}{more}"


def _no_constant(name: str) -> None:
  return None  # NaN / Infinity (which Python's json would accept) are read as null.


def load_results(path: str) -> list[dict[str, Any]]:
  """Reads a results file (ours or the official evaluator's: a regular file of at most MAX_BYTES,
  one entry per task index); a ValueError names what is wrong."""
  data = read_bounded(path, "results file", MAX_BYTES)
  try:
    data = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e}); it is left untouched") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of per-video results, got {type(data).__name__}")
  first: dict[int, int] = {}
  for i, item in enumerate(data):
    if not isinstance(item, dict) or isinstance(item.get("index"), bool) or not isinstance(item.get("index"), int):
      raise ValueError(f"{path}: entry {i} has no integer 'index'")
    if item["index"] in first:
      raise ValueError(f"{path}: task {item['index']} appears twice (entries {first[item['index']]} and {i})")
    first[item["index"]] = i
    problem = status_problem(item.get("status"))
    if problem:
      raise ValueError(f"{path}: task {item['index']}: malformed 'status' ({problem}); fix or delete that entry")
  return data


def status_problem(status: Any) -> str | None:
  """Why a results entry's `status` is malformed, or None (absent, as in official files, is fine)."""
  if status is None:
    return None
  if not isinstance(status, dict):
    return f"a JSON {type(status).__name__}, not an object"
  for dim, value in status.items():
    if not isinstance(value, dict):
      return f"{dim!r} is a JSON {type(value).__name__}, not an object"
    if not isinstance(value.get("state"), str):
      return f"{dim!r} has no string 'state'"
    if value.get("criteria") is not None and not isinstance(value["criteria"], list):
      return f"{dim!r} 'criteria' is not a list"
  return None


class ResultStore:
  """Per-video results keyed by task index; `record` is thread-safe and journaled at once."""

  def __init__(self, path: str):
    self.path = path
    self.journal_path = path + ".journal"
    self.items: dict[int, dict[str, Any]] = {}
    self.skipped_journal_lines: list[str] = []  # "line N: why" for each line that was not replayed
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
    """Replays every well-formed line; a line cut short by a kill, or any other line that is not
    a journal entry, is skipped and counted (its item is simply redone)."""
    with open_regular(self.journal_path, "journal") as f:
      for number, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        try:
          entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
          self.skipped_journal_lines.append(f"line {number}: not JSON ({type(e).__name__})")
          continue
        problem = journal_entry_problem(entry)
        if problem:
          self.skipped_journal_lines.append(f"line {number}: {problem}")
          continue
        self._apply(entry)

  def _apply(self, entry: dict[str, Any]) -> None:
    item = self.items.setdefault(entry["index"], {"index": entry["index"]})
    item["video_path"] = entry["video_path"]
    item[EVAL_KEY[entry["dimension"]]] = entry["eval"]
    item["judge_model"] = entry["judge_model"]
    if entry.get("protocol"):
      item["protocol"] = entry["protocol"]
    if not isinstance(item.get("status"), dict):
      item["status"] = {}
    item["status"][entry["dimension"]] = entry["status"]

  def record(
    self,
    index: int,
    video_path: str,
    dimension: str,
    evaluation: dict[str, Any],
    status: dict[str, Any],
    judge_model: str,
    protocol: str | None = None,
  ) -> None:
    entry = {
      "index": index,
      "video_path": video_path,
      "dimension": dimension,
      "eval": evaluation,
      "status": status,
      "judge_model": judge_model,
    }
    if protocol:
      entry["protocol"] = protocol
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    with self._lock:
      self._apply(entry)
      self._journal.write(line)
      self._journal.flush()

  def _ordered(self) -> list[dict[str, Any]]:
    out = []
    for index in sorted(self.items):
      item = self.items[index]
      keys = ["index", "video_path", *EVAL_KEY.values(), "status", "judge_model", "protocol"]
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
