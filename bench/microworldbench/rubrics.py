"""MicroWorldBench rubrics: loading, normalising and validating the official files.

Both official files are lists of tasks. Task text sits under `task`/`requirement`
(MWBenchRubrics.json) or `任务`/`具体要求` (MWBenchRubrics_norm.json). Each dimension block
`rubrics_<dim>` maps `dN` (criterion text), `sN` ("+1" positive, "-1" penalty) and `wN`
(weight, a number or a string) for N = 1..5, or 11, 22, ... 55 in some blocks.

Loading keeps two views of every block: `criteria` (ordered by N, validated, what the judge
sees and what `strict` scoring uses) and `raw` (the block as stored, what `official` scoring
reads, since the official formula depends on the raw keys).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
from typing import Any

from microworldbench.files import read_bounded

DIMENSIONS = ("scientific", "visual", "instruction")
CATEGORIES = ("Organ-level", "Cellular-level", "Subcellular-level")
MAX_BYTES = 64 << 20  # Cap on a rubric or task file (the official ones are about 3 MB).
TASK_TEXT_KEYS = (("task", "requirement"), ("任务", "具体要求"))

_KEY_RE = re.compile(r"([dsw])(\d+)")
_CANONICAL_WEIGHT_RE = re.compile(r"\d+\.\d+")


@dataclasses.dataclass(frozen=True)
class Criterion:
  """One rubric line: `number` is N of dN; sign +1 (met is good) or -1 (penalty)."""

  number: int
  text: str
  sign: int
  weight: float


@dataclasses.dataclass(frozen=True)
class Task:
  index: int
  task: str
  requirement: str
  category: str | None
  criteria: dict[str, tuple[Criterion, ...]]  # dimension -> criteria ordered by number
  raw: dict[str, dict[str, Any]]  # dimension -> block as stored in the file
  # (任务, 具体要求) as the row stores them ("" when absent): what the official prompt shows.
  official_text: tuple[str, str] = ("", "")


@dataclasses.dataclass(frozen=True)
class Anomaly:
  """Something unusual in a rubric file; `code` is a short stable tag."""

  index: int | None
  dimension: str | None
  code: str
  detail: str

  def __str__(self) -> str:
    where = f"task {self.index}" if self.index is not None else "file"
    if self.dimension:
      where += f" {self.dimension}"
    return f"{where}: {self.code}: {self.detail}"


@dataclasses.dataclass
class RubricSet:
  path: str
  tasks: dict[int, Task]
  anomalies: list[Anomaly]

  def anomaly_counts(self) -> dict[str, int]:
    return dict(collections.Counter(a.code for a in self.anomalies))

  def summary(self, examples: int = 3) -> str:
    """Human-readable anomaly summary: one line per code with a few examples."""
    by_code: dict[str, list[Anomaly]] = collections.defaultdict(list)
    for a in self.anomalies:
      by_code[a.code].append(a)
    lines = [f"{self.path}: {len(self.tasks)} tasks, {len(self.anomalies)} anomalies"]
    for code, items in sorted(by_code.items()):
      shown = "; ".join(str(a) for a in items[:examples])
      more = f" (+{len(items) - examples} more)" if len(items) > examples else ""
      lines.append(f"  {code} x{len(items)}: {shown}{more}")
    return "\n".join(lines)


class RubricError(ValueError):
  """A rubric file that cannot be scored (or has anomalies under --strict_rubrics)."""


def _parse_weight(value: Any, where: str) -> float:
  if isinstance(value, bool):
    raise RubricError(f"{where}: weight {value!r} is a bool, expected a number")
  try:
    weight = float(value)
  except (TypeError, ValueError):
    raise RubricError(f"{where}: weight {value!r} is not a number") from None
  if not weight >= 0.0 or weight == float("inf"):
    raise RubricError(f"{where}: weight {value!r} must be a finite number >= 0")
  return weight


def _parse_block(index: int, dim: str, block: Any, path: str, anomalies: list[Anomaly]) -> tuple[Criterion, ...]:
  where = f"{path}: task {index} rubrics_{dim}"
  if not isinstance(block, dict) or not block:
    raise RubricError(f"{where}: expected a non-empty dict of dN/sN/wN, got {block!r:.80}")
  parts: dict[int, dict[str, Any]] = collections.defaultdict(dict)
  for key, value in block.items():
    match = _KEY_RE.fullmatch(key)
    if not match:
      anomalies.append(Anomaly(index, dim, "unknown_key", f"key {key!r} ignored"))
      continue
    parts[int(match.group(2))][match.group(1)] = value
  numbers = sorted(parts)
  if numbers != list(range(1, len(numbers) + 1)):
    anomalies.append(Anomaly(index, dim, "renumbered", f"criteria numbered {numbers}, not 1..{len(numbers)}"))
  criteria = []
  for n in numbers:
    p = parts[n]
    missing = [k for k in "dsw" if k not in p]
    if missing:
      anomalies.append(
        Anomaly(
          index, dim, "incomplete_criterion", f"criterion {n} lacks {'/'.join(k + str(n) for k in missing)}; skipped"
        )
      )
      continue
    sign = {"+1": 1, "-1": -1, "1": 1}.get(str(p["s"]).strip())
    if sign is None:
      raise RubricError(f"{where}: s{n}={p['s']!r}, expected '+1' or '-1'")
    if p["s"] not in ("+1", "-1"):
      anomalies.append(Anomaly(index, dim, "odd_sign", f"s{n}={p['s']!r} read as {sign:+d}"))
    weight = _parse_weight(p["w"], f"{where} w{n}")
    if isinstance(p["w"], str):
      anomalies.append(Anomaly(index, dim, "string_weight", f"w{n}={p['w']!r}"))  # Kept if types mix.
      if not _CANONICAL_WEIGHT_RE.fullmatch(p["w"]):
        anomalies.append(Anomaly(index, dim, "odd_weight_format", f"w{n}={p['w']!r} read as {weight}"))
    if weight == 0.0:
      anomalies.append(Anomaly(index, dim, "zero_weight", f"criterion {n} has weight 0"))
    if not isinstance(p["d"], str) or not p["d"].strip():
      anomalies.append(Anomaly(index, dim, "empty_criterion_text", f"d{n} is empty"))
    criteria.append(Criterion(number=n, text=str(p["d"]).strip(), sign=sign, weight=weight))
  if not criteria:
    raise RubricError(f"{where}: no complete criterion (dN, sN and wN)")
  if sum(c.weight for c in criteria if c.sign > 0) <= 0.0:
    anomalies.append(
      Anomaly(index, dim, "no_positive_weight", "positive weights sum to 0; the dimension cannot be normalised")
    )
  return tuple(criteria)


def _read_json(path: str, what: str) -> Any:
  return json.loads(read_bounded(path, what, MAX_BYTES).decode("utf-8"))


def load_categories(path: str) -> dict[int, str]:
  """finaltasks.json -> {index: final_label}."""
  data = _read_json(path, "--tasks")
  if not isinstance(data, list):
    raise RubricError(f"{path}: expected a JSON list of tasks, got {type(data).__name__}")
  out = {}
  for i, item in enumerate(data):
    if not isinstance(item, dict) or "index" not in item or "final_label" not in item:
      raise RubricError(f"{path}: entry {i} lacks 'index' or 'final_label'")
    out[int(item["index"])] = str(item["final_label"])
  return out


def load_rubrics(path: str, tasks_path: str | None = None, strict: bool = False) -> RubricSet:
  """Loads either official rubric file (plus finaltasks.json for categories) and validates it.

  Raises RubricError on what cannot be scored (non-numeric weight, unknown sign, duplicate
  index, missing dimension) and, when `strict`, on any anomaly.
  """
  data = _read_json(path, "--rubrics")
  if not isinstance(data, list):
    raise RubricError(f"{path}: expected a JSON list of tasks, got {type(data).__name__}")
  categories = load_categories(tasks_path) if tasks_path else {}
  anomalies: list[Anomaly] = []
  tasks: dict[int, Task] = {}
  counts = collections.Counter()
  for pos, item in enumerate(data):
    if not isinstance(item, dict) or not isinstance(item.get("index"), int):
      raise RubricError(f"{path}: entry {pos} has no integer 'index'")
    index = item["index"]
    if index in tasks:
      raise RubricError(f"{path}: task index {index} appears twice")
    task_text = requirement = ""
    for task_key, req_key in TASK_TEXT_KEYS:
      if task_key in item or req_key in item:
        task_text, requirement = str(item.get(task_key, "")), str(item.get(req_key, ""))
        break
    if not task_text.strip():
      anomalies.append(
        Anomaly(index, None, "missing_task_text", "no text under task/任务; the judge would see an empty task")
      )
    criteria, raw = {}, {}
    for dim in DIMENSIONS:
      key = f"rubrics_{dim}"
      if key not in item:
        raise RubricError(f"{path}: task {index} has no {key!r}")
      raw[dim] = item[key]
      criteria[dim] = _parse_block(index, dim, item[key], path, anomalies)
      counts[len(criteria[dim])] += 1
    category = categories.get(index) if tasks_path else None
    if tasks_path and category not in CATEGORIES:
      anomalies.append(Anomaly(index, None, "missing_category", f"category {category!r} is not one of {CATEGORIES}"))
    official_text = tuple("" if item.get(k) is None else str(item[k]) for k in TASK_TEXT_KEYS[1])
    tasks[index] = Task(index, task_text, requirement, category, criteria, raw, official_text)
  if counts:
    usual = counts.most_common(1)[0][0]
    for t in tasks.values():
      for dim in DIMENSIONS:
        if len(t.criteria[dim]) != usual:
          anomalies.append(
            Anomaly(t.index, dim, "criteria_count", f"{len(t.criteria[dim])} criteria, most blocks have {usual}")
          )
  string_weights = sum(a.code == "string_weight" for a in anomalies)
  if string_weights == sum(len(t.criteria[d]) for t in tasks.values() for d in DIMENSIONS):
    anomalies = [a for a in anomalies if a.code != "string_weight"]  # All strings: the file's convention.
  result = RubricSet(path=path, tasks=tasks, anomalies=anomalies)
  if strict and anomalies:
    raise RubricError(f"--strict_rubrics: anomalies found\n{result.summary()}")
  return result


def register_cli(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser("rubrics", help="validate a rubric file and list its anomalies")
  p.add_argument("--rubrics", required=True, help="MWBenchRubrics.json or MWBenchRubrics_norm.json")
  p.add_argument("--tasks", help="finaltasks.json (checks categories)")
  p.add_argument("--examples", type=int, default=3, help="examples shown per anomaly kind")
  p.add_argument("--strict_rubrics", "--strict-rubrics", action="store_true", help="exit non-zero on any anomaly")
  p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
  rubrics = load_rubrics(args.rubrics, args.tasks, strict=args.strict_rubrics)
  criteria = [c for t in rubrics.tasks.values() for d in t.criteria.values() for c in d]
  print(f"{len(criteria)} criteria, {sum(c.sign < 0 for c in criteria)} penalties")
  print(rubrics.summary(args.examples))
  return 0
