"""`microworldbench agreement`: how far two or more judges agree on the same videos.

Every criterion decision (task, dimension, criterion) judged validly by both judges of a pair is
one paired binary rating; per pair we report percent agreement and Cohen's kappa, overall, per
dimension and per criterion kind (positive / penalty), and the mean pairwise kappa over pairs.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np

from microworldbench.aggregate import check_indices, model_name, recorded
from microworldbench.files import write_json_atomic
from microworldbench.judge import ReplyError, check_scores
from microworldbench.results import EVAL_KEY, load_results
from microworldbench.rubrics import DIMENSIONS, RubricSet, load_rubrics


def decisions(results: list[dict[str, Any]], rubrics: RubricSet) -> dict[tuple[int, str, int], int]:
  """{(task, dimension, criterion number): 0/1} for dimensions with exactly one 0/1 per criterion."""
  out = {}
  for item in results:
    task = rubrics.tasks.get(item.get("index"))
    if task is None:
      continue
    for dim in DIMENSIONS:
      status = (item.get("status") or {}).get(dim)
      if status is not None and status.get("state") != "scored":
        continue
      evaluation = item.get(EVAL_KEY[dim])
      parsed = evaluation.get("parsed_result") if isinstance(evaluation, dict) else None
      if not isinstance(parsed, dict):
        continue
      criteria = task.criteria[dim]
      try:
        scores = check_scores(parsed.get("scores"), len(criteria))
      except ReplyError:
        continue
      for c, s in zip(criteria, scores):
        out[(task.index, dim, c.number)] = s
  return out


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
  """Cohen's kappa of two binary rating vectors; None when undefined (no data, or both constant)."""
  if len(a) == 0:
    return None
  observed = float(np.mean(a == b))
  pa, pb = float(np.mean(a)), float(np.mean(b))
  expected = pa * pb + (1 - pa) * (1 - pb)
  if expected >= 1.0:
    return None
  return (observed - expected) / (1.0 - expected)


def _stats(keys: list, da: dict, db: dict) -> dict[str, Any]:
  a = np.array([da[k] for k in keys], dtype=np.int8)
  b = np.array([db[k] for k in keys], dtype=np.int8)
  return {
    "decisions": len(keys),
    "percent_agreement": float(np.mean(a == b) * 100) if keys else None,
    "kappa": cohen_kappa(a, b),
  }


def agreement(judged: dict[str, list[dict[str, Any]]], rubrics: RubricSet) -> dict[str, Any]:
  """Pairwise agreement between judges: {"judges", "pairs": [...], "mean_kappa"}."""
  if len(judged) < 2:
    raise ValueError(f"agreement needs results from two or more judges, got {len(judged)}")
  sign = {(t.index, d, c.number): c.sign for t in rubrics.tasks.values() for d in DIMENSIONS for c in t.criteria[d]}
  per_judge = {name: decisions(results, rubrics) for name, results in judged.items()}
  pairs = []
  for (na, da), (nb, db) in itertools.combinations(per_judge.items(), 2):
    keys = sorted(set(da) & set(db))
    entry = {"a": na, "b": nb, "tasks": len({k[0] for k in keys}), **_stats(keys, da, db)}
    entry["dimensions"] = {d: _stats([k for k in keys if k[1] == d], da, db) for d in DIMENSIONS}
    entry["kinds"] = {
      kind: _stats([k for k in keys if sign[k] == s], da, db) for kind, s in (("positive", 1), ("penalty", -1))
    }
    pairs.append(entry)
  kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
  return {"judges": list(judged), "pairs": pairs, "mean_kappa": sum(kappas) / len(kappas) if kappas else None}


def markdown(result: dict[str, Any]) -> str:
  def f(v, spec):
    return "–" if v is None else format(v, spec)

  lines = [
    "| Judge A | Judge B | Tasks | Decisions | Agreement % | Kappa | "
    + " | ".join(f"Kappa {d}" for d in DIMENSIONS)
    + " |",
    "|---" * (6 + len(DIMENSIONS)) + "|",
  ]
  for p in result["pairs"]:
    lines.append(
      f"| {p['a']} | {p['b']} | {p['tasks']} | {p['decisions']} | "
      f"{f(p['percent_agreement'], '.1f')} | {f(p['kappa'], '.3f')} | "
      + " | ".join(f(p["dimensions"][d]["kappa"], ".3f") for d in DIMENSIONS)
      + " |"
    )
  lines += ["", f"Mean pairwise kappa: {f(result['mean_kappa'], '.3f')}"]
  return "\n".join(lines)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
    "agreement",
    help="agreement (Cohen's kappa) between judges",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--results", nargs="+", required=True, help="results files of the same videos, one per judge")
  p.add_argument("--rubrics", required=True, help="MWBenchRubrics.json or MWBenchRubrics_norm.json")
  p.add_argument("--name", nargs="+", help="judge names, one per results file")
  p.add_argument("--json", help="write the agreement JSON here")
  p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
  rubrics = load_rubrics(args.rubrics)
  if args.name and len(args.name) != len(args.results):
    raise ValueError(f"--name: {len(args.name)} names for {len(args.results)} results files")
  judged = {}
  for i, path in enumerate(args.results):
    name = model_name(path, args.name[i] if args.name else None)
    if name in judged:
      raise ValueError(f"{path}: judge name {name!r} used twice; pass --name")
    judged[name] = load_results(path)
    check_indices(path, judged[name], rubrics)
    recorded(path, judged[name], "judge_model")  # One judge per file.
  result = agreement(judged, rubrics)
  if args.json:
    write_json_atomic(args.json, result)
  print(markdown(result))
  return 0
