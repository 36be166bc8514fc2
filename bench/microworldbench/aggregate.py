"""`microworldbench aggregate`: benchmark scores from results files, in two modes.

Per dimension: raw = Σ sign·w over criteria judged 1, max = Σ w over positive criteria,
score = max(0, raw / max) · 100 (0 when max <= 0). The task score pools the three dimensions:
max(0, Σ raw / Σ max) · 100. Model, category and dimension scores are means over tasks.

`official` reproduces calculate_scores.py of the official repository, defects included: score i is
matched to criterion i+1 by position, so short lists shrink the denominator, extra scores and blocks
numbered d11..d55 are ignored (such a block scores 0), and tasks with a dimension missing or
unparsed are dropped. `strict` matches the K scores to the K criteria of each dimension in rubric
order, requires exactly K values in {0, 1}, and reports tasks without three valid dimensions as
incomplete instead of averaging them in.

Refused: a results file holding a task twice or a task the rubric file lacks, a file whose tasks
record different judges or protocols (or some none), and files of different judges or protocols.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

import numpy as np

from microworldbench.files import write_json_atomic
from microworldbench.judge import ReplyError, check_scores
from microworldbench.progress import Progress, add_progress_flags
from microworldbench.results import EVAL_KEY, load_results, name_tasks
from microworldbench.rubrics import CATEGORIES, DIMENSIONS, RubricSet, Task, load_rubrics

MODES = ("official", "strict")


@dataclasses.dataclass(frozen=True)
class TaskScore:
  index: int
  category: str | None
  total: float
  dimensions: tuple[float, float, float]  # scientific, visual, instruction


@dataclasses.dataclass
class ModelScores:
  name: str
  mode: str
  tasks: list[TaskScore]
  incomplete: dict[int, str]  # index -> why (strict) or why dropped (official)
  missing: list[int]  # rubric tasks with no entry in the results


def _normalise(raw: float, max_possible: float) -> float:
  if max_possible <= 0:
    return 0.0
  return max(0.0, raw / max_possible * 100)


def _official_dimension(scores: Any, block: Any) -> tuple[float, float]:
  """(raw, max) of one dimension as the official scorer computes it from the raw rubric block."""
  if not block or not scores:
    return 0.0, 0.0
  numbers = {int(k[1:]) for k in block if k.startswith("s") and k[1:].isdigit()}
  raw = max_possible = 0.0
  for i, score in enumerate(scores):
    n = i + 1
    if n not in numbers:
      continue
    sign_text = str(block.get(f"s{n}", "0"))
    weight = float(block.get(f"w{n}", 0))
    sign = 1 if sign_text == "+1" else -1 if sign_text == "-1" else int(sign_text)
    if score == 1:
      raw += sign * weight
    if sign > 0:
      max_possible += weight
  return raw, max_possible


def _official_task(item: dict[str, Any], task: Task) -> TaskScore | str:
  """The task's official scores, or why the official scorer drops it."""
  raw_sum = max_sum = 0.0
  dims = []
  for dim in DIMENSIONS:
    evaluation = item.get(EVAL_KEY[dim], {})
    if evaluation and not isinstance(evaluation, dict):
      return f"{dim}: evaluation is not an object"
    parsed = evaluation.get("parsed_result") if evaluation else None
    if not parsed:
      return f"{dim}: no parsed result"
    if not isinstance(parsed, dict):
      return f"{dim}: parsed result is not an object"
    scores = parsed.get("scores", [])
    if not scores:
      return f"{dim}: empty score list"
    if not isinstance(scores, (list, str, dict)):
      return f"{dim}: scores is not a list"
    raw, mx = _official_dimension(scores, task.raw[dim])
    dims.append(_normalise(raw, mx))
    raw_sum += raw
    max_sum += mx
  return TaskScore(task.index, task.category, _normalise(raw_sum, max_sum), tuple(dims))


def _strict_task(item: dict[str, Any], task: Task) -> TaskScore | str:
  """The task's scores over every criterion, or why it is incomplete."""
  raw_sum = max_sum = 0.0
  dims = []
  for dim in DIMENSIONS:
    criteria = task.criteria[dim]
    status = (item.get("status") or {}).get(dim)
    if status is not None and status.get("state") != "scored":
      return f"{dim}: {status.get('state')} ({status.get('reason')})"
    if status is not None and status.get("criteria") not in (None, [c.number for c in criteria]):
      return f"{dim}: judged against criteria {status.get('criteria')}, rubric has {[c.number for c in criteria]}"
    evaluation = item.get(EVAL_KEY[dim])
    parsed = evaluation.get("parsed_result") if isinstance(evaluation, dict) else None
    if not isinstance(parsed, dict):
      return f"{dim}: no parsed result"
    try:
      scores = check_scores(parsed.get("scores"), len(criteria))
    except ReplyError as e:
      return f"{dim}: {e}"
    raw = sum(c.sign * c.weight for c, s in zip(criteria, scores) if s == 1)
    mx = sum(c.weight for c in criteria if c.sign > 0)
    dims.append(_normalise(raw, mx))
    raw_sum += raw
    max_sum += mx
  return TaskScore(task.index, task.category, _normalise(raw_sum, max_sum), tuple(dims))


def check_indices(path: str, results: list[dict[str, Any]], rubrics: RubricSet) -> None:
  """Refuses results for tasks that the rubric file does not hold (judged against another one?)."""
  unknown = sorted(item["index"] for item in results if item["index"] not in rubrics.tasks)
  if unknown:
    verb = "are" if len(unknown) > 1 else "is"
    raise ValueError(f"{path}: {name_tasks(unknown)} {verb} not in {rubrics.path}; judged against another rubric file?")


def recorded(path: str, results: list[dict[str, Any]], key: str) -> str | None:
  """The `key` ('judge_model' or 'protocol') that every entry of a results file records, or None
  when none records one; ValueError when entries differ (an unrecorded one differs from any)."""
  tasks: dict[str | None, list[int]] = {}
  for item in results:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
      raise ValueError(f"{path}: task {item['index']}: {key!r} {value!r} is not a string")
    tasks.setdefault(value, []).append(item["index"])
  if len(tasks) > 1:
    shown = ", ".join(f"{'not recorded' if v is None else repr(v)} ({name_tasks(ix)})" for v, ix in tasks.items())
    raise ValueError(
      f"{path}: {key} differs between tasks: {shown}; one model's scores must come from one judge and one "
      f"protocol (evaluate --adopt labels the unrecorded tasks of a file it resumes)"
    )
  return next(iter(tasks), None)


def _one_value(by_path: dict[str, str | None], what: str, noun: str) -> str | None:
  """The one value recorded over several files (files recording none go with any)."""
  found: dict[str, str] = {}
  for path, value in by_path.items():
    if value is not None:
      found.setdefault(value, path)
  if len(found) > 1:
    raise ValueError(
      f"results judged {what} cannot be compared: "
      + ", ".join(f"{v!r} ({path})" for v, path in sorted(found.items()))
      + f"; aggregate each {noun} on its own"
    )
  return next(iter(found), None)


def score_model(name: str, results: list[dict[str, Any]], rubrics: RubricSet, mode: str) -> ModelScores:
  """Per-task scores of one model's results in `mode` ('official' or 'strict'); each entry's
  index is a task of `rubrics`, each once (as `load_results` and `check_indices` make sure)."""
  if mode not in MODES:
    raise ValueError(f"--mode {mode!r}: expected one of {MODES}")
  seen = {item["index"] for item in results}
  missing = sorted(i for i in rubrics.tasks if i not in seen)
  tasks: list[TaskScore] = []
  incomplete: dict[int, str] = {}
  for item in results:
    task = rubrics.tasks[item["index"]]
    scored = (_official_task if mode == "official" else _strict_task)(item, task)
    if isinstance(scored, str):
      incomplete[task.index] = scored
    else:
      tasks.append(scored)
  return ModelScores(name, mode, tasks, incomplete, missing)


def _mean(values: list[float]) -> float | None:
  return sum(values) / len(values) if values else None  # Python sum: the official's arithmetic.


def bootstrap_ci(values: list[float], resamples: int, rng: np.random.Generator) -> list[float] | None:
  """Percentile 95% interval of the mean, resampling the values (tasks) with replacement."""
  if not values:
    return None
  x = np.asarray(values, dtype=np.float64)
  means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(scores: ModelScores, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
  """The JSON summary of one model (means, counts, bootstrap CIs, incomplete tasks)."""
  empty = 0.0 if scores.mode == "official" else None  # The official report prints 0.0.
  rng = np.random.default_rng(seed)
  by_cat = {c: [t.total for t in scores.tasks if t.category == c] for c in CATEGORIES}
  by_dim = {d: [t.dimensions[i] for t in scores.tasks] for i, d in enumerate(DIMENSIONS)}
  totals = [t.total for t in scores.tasks]

  def mean(v):
    m = _mean(v)
    return empty if m is None else m

  return {
    "mode": scores.mode,
    "valid_tasks": len(scores.tasks),
    "overall": mean(totals),
    "categories": {c: mean(v) for c, v in by_cat.items()},
    "dimensions": {d: mean(v) for d, v in by_dim.items()},
    "category_tasks": {c: len(v) for c, v in by_cat.items()},
    "ci95": {
      "overall": bootstrap_ci(totals, resamples, rng),
      "categories": {c: bootstrap_ci(v, resamples, rng) for c, v in by_cat.items()},
      "dimensions": {d: bootstrap_ci(v, resamples, rng) for d, v in by_dim.items()},
    },
    "incomplete_tasks": {str(i): r for i, r in sorted(scores.incomplete.items())},
    "missing_tasks": scores.missing,
  }


def model_name(path: str, given: str | None) -> str:
  if given:
    return given
  base = os.path.basename(path)
  if base.endswith("_result.json"):
    return base[: -len("_result.json")]
  return os.path.splitext(base)[0]


def aggregate(
  result_paths: list[str],
  rubrics: RubricSet,
  mode: str,
  names: list[str] | None = None,
  resamples: int = 2000,
  seed: int = 0,
  progress: bool | None = None,
) -> dict[str, Any]:
  """{"mode", "judge_model", "protocol", "rubrics", "models": {name: summary}} for several results files.

  Every task of a file must record the same judge model and protocol (or none: the official
  evaluator's files), and the files that record them must agree: scores of different judges, or
  judged with different prompts, are not comparable. Files that record none go with any; each
  model's summary says what its file records (None: not recorded).
  """
  if names and len(names) != len(result_paths):
    raise ValueError(f"--name: {len(names)} names for {len(result_paths)} results files")
  loaded, judges, protocols = [], {}, {}
  for path in result_paths:
    results = load_results(path)
    check_indices(path, results, rubrics)
    judges[path], protocols[path] = recorded(path, results, "judge_model"), recorded(path, results, "protocol")
    loaded.append((path, results))
  protocol = _one_value(protocols, "with different protocols", "protocol")
  judge = _one_value(judges, "by different judges", "judge")
  models: dict[str, Any] = {}
  bar = Progress(len(loaded), desc="scoring ", enabled=progress, unit="file")
  for i, (path, results) in enumerate(loaded):
    name = model_name(path, names[i] if names else None)
    if name in models:
      raise ValueError(f"{path}: model name {name!r} used twice; pass --name")
    models[name] = summarize(score_model(name, results, rubrics, mode), resamples, seed)
    models[name].update(judge_model=judges[path], protocol=protocols[path])
    bar.update("done")
  bar.close()
  return {"mode": mode, "judge_model": judge, "protocol": protocol, "rubrics": rubrics.path, "models": models}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
    "aggregate",
    help="scores, CIs, report and plots from results files",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--results", nargs="+", required=True, help="<Model>_result.json files, one per model")
  p.add_argument("--rubrics", required=True, help="MWBenchRubrics_norm.json (the scoring weights)")
  p.add_argument("--tasks", required=True, help="finaltasks.json (categories)")
  p.add_argument(
    "--mode",
    choices=MODES,
    default="strict",
    help="'official': the official calculate_scores.py, defects included; 'strict': every criterion",
  )
  p.add_argument("--name", nargs="+", help="model names, one per results file")
  p.add_argument("--json", help="write the summary JSON here")
  p.add_argument("--markdown", help="write a Markdown report here")
  p.add_argument("--plots", help="folder for PNG plots (needs matplotlib: pip install microworldbench[plots])")
  p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
  p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
  p.add_argument("--strict_rubrics", "--strict-rubrics", action="store_true", help="fail on any rubric anomaly")
  add_progress_flags(p)
  p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
  from microworldbench import report

  rubrics = load_rubrics(args.rubrics, args.tasks, strict=args.strict_rubrics)
  summary = aggregate(args.results, rubrics, args.mode, args.name, args.bootstrap, args.seed, args.progress)
  plots = report.write_plots(summary, args.plots) if args.plots else []
  if args.json:
    write_json_atomic(args.json, summary)
  if args.markdown:
    report.write_markdown(summary, args.markdown, plots, rubrics)
  print(report.markdown_tables(summary))
  if rubrics.anomalies:
    print(f"({len(rubrics.anomalies)} rubric anomalies: {rubrics.anomaly_counts()})", file=sys.stderr)
  return 0
