"""Aggregation: hand-computed official and strict scores, the official formula on the official
files, bootstrap CIs, and the `aggregate` CLI (JSON, Markdown, PNG plots)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from mwb_helpers import official_file

from microworldbench.aggregate import aggregate, bootstrap_ci, score_model, summarize
from microworldbench.cli import main
from microworldbench.rubrics import DIMENSIONS, load_rubrics

LABELS = {1: "Organ-level", 2: "Cellular-level", 3: "Cellular-level", 4: "Subcellular-level", 5: "Organ-level"}


def _block(weights, signs, numbering=1):
  out = {}
  for i, (w, s) in enumerate(zip(weights, signs), start=1):
    n = i * numbering
    out.update({f"d{n}": f"criterion {n}", f"s{n}": s, f"w{n}": w})
  return out


P, N = "+1", "-1"


@pytest.fixture
def hand_case(tmp_path):
  """Five tasks in the norm file's layout (任务/具体要求) and one model's results."""

  def task(i, sci, vis, ins):
    return {
      "index": i,
      "任务": f"TASK-{i}",
      "具体要求": "req",
      "rubrics_scientific": sci,
      "rubrics_visual": vis,
      "rubrics_instruction": ins,
    }

  plain = _block([1.0] * 5, [P, P, P, P, N])
  tasks = [
    # Zero weight (criterion 4), penalties, string weights, clamping at 0 (instruction).
    task(1, _block([1.0, 0.5, "0.5", 0.0, 1.0], [P, P, P, P, N]), _block(["0.5"] * 5, [P, P, P, P, N]), plain),
    task(2, _block([1.0, 0.5, 0.5, 0.5, 0.5], [P] * 5), plain, _block([1.0] * 5, [P] * 5, numbering=11)),
    task(3, plain, plain, _block([0.5] * 5, [P] * 5, numbering=11)),
    task(4, plain, plain, plain),
    task(5, plain, plain, plain),
  ]
  rpath, tpath = tmp_path / "norm.json", tmp_path / "tasks.json"
  rpath.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
  tpath.write_text(json.dumps([{"index": i, "final_label": c} for i, c in LABELS.items()]))

  def ev(scores):
    return {
      "raw_response": json.dumps({"scores": scores}),
      "parsed_result": None if scores is None else {"scores": scores, "reasoning": ""},
    }

  results = [
    {
      "index": 1,
      "scientific_eval": ev([1, 0, 1, 1, 1]),
      "visual_eval": ev([1, 1, 1, 1, 0]),
      "instruction_eval": ev([0, 0, 0, 0, 1]),
    },
    {
      "index": 2,
      "scientific_eval": ev([1]),
      "visual_eval": ev([1, 1, 1, 1, 1, 1]),
      "instruction_eval": ev([1, 1, 1, 1, 1]),
    },
    {
      "index": 3,
      "scientific_eval": ev([1, 1, 0, 0, 0]),
      "visual_eval": ev([1, 1, 1, 1, 0]),
      "instruction_eval": ev([1, 0, 1, 0, 1]),
    },
    {"index": 4, "scientific_eval": ev([1] * 5), "visual_eval": ev([1] * 5), "instruction_eval": ev(None)},
  ]
  res = tmp_path / "Hand_result.json"
  res.write_text(json.dumps(results))
  return load_rubrics(str(rpath), str(tpath)), results, str(res), str(rpath), str(tpath)


def test_official_mode_hand_computed(hand_case):
  rubrics, results, *_ = hand_case
  s = summarize(score_model("m", results, rubrics, "official"))
  # Task 1: sci raw 1+0.5+0-1 = 0.5 / max 2.0 -> 25; vis 2.0/2.0 -> 100; ins -1/4 -> clamped 0;
  #   pooled (0.5+2-1)/(2+2+4) = 18.75.
  # Task 2: sci [1] matches criterion 1 only: 1/1 -> 100 (short list shrinks the denominator);
  #   vis 6 scores, the 6th ignored: (4-1)/4 -> 75; ins d11..d55 never scored: 0/0 -> 0; pooled 4/5 -> 80.
  # Task 3: sci 2/4 -> 50; vis 4/4 -> 100; ins (d11 block) 0; pooled 6/8 -> 75.
  # Task 4: instruction unparsed -> dropped. Task 5: no result.
  assert s["valid_tasks"] == 3
  assert s["overall"] == pytest.approx((18.75 + 80 + 75) / 3)
  assert s["categories"] == pytest.approx({"Organ-level": 18.75, "Cellular-level": 77.5, "Subcellular-level": 0.0})
  assert s["dimensions"] == pytest.approx(
    {"scientific": (25 + 100 + 50) / 3, "visual": (100 + 75 + 100) / 3, "instruction": 0.0}
  )
  assert s["category_tasks"] == {"Organ-level": 1, "Cellular-level": 2, "Subcellular-level": 0}
  assert list(s["incomplete_tasks"]) == ["4"] and s["missing_tasks"] == [5]


def test_strict_mode_hand_computed(hand_case):
  rubrics, results, *_ = hand_case
  s = summarize(score_model("m", results, rubrics, "strict"))
  # Task 1 as official (18.75). Task 2 incomplete (1 scientific score for 5 criteria).
  # Task 3: ins d11..d55 are judged: (0.5+0.5+0.5)/2.5 -> 60; pooled (2+4+1.5)/(4+4+2.5) = 71.43.
  t3 = 7.5 / 10.5 * 100
  assert s["valid_tasks"] == 2
  assert s["overall"] == pytest.approx((18.75 + t3) / 2)
  assert s["categories"] == pytest.approx({"Organ-level": 18.75, "Cellular-level": t3, "Subcellular-level": None})
  assert s["dimensions"] == pytest.approx({"scientific": 37.5, "visual": 100.0, "instruction": 30.0})
  assert s["incomplete_tasks"] == {
    "2": '''scientific: "scores" has 1 values, expected 5''',
    "4": "instruction: no parsed result",
  }
  assert s["missing_tasks"] == [5]


def test_strict_mode_trusts_failed_status(hand_case):
  rubrics, results, *_ = hand_case
  item = dict(results[0], status={"visual": {"state": "failed", "reason": "HTTP 500", "criteria": [1, 2, 3, 4, 5]}})
  s = summarize(score_model("m", [item], rubrics, "strict"))
  assert s["valid_tasks"] == 0 and s["incomplete_tasks"] == {"1": "visual: failed (HTTP 500)"}


def _official_oracle(results, norm, labels):
  """The official calculate_scores.py formula (README of ../shared/microworldbench), written out
  independently: position i -> criterion i+1, short lists shrink the denominator."""
  by_index = {t["index"]: t for t in norm}
  totals, dims, cats = [], {d: [] for d in DIMENSIONS}, {}
  for item in results:
    if item["index"] not in by_index:
      continue
    per_dim, rs, ms = [], 0.0, 0.0
    for d in DIMENSIONS:
      parsed = (item.get(f"{d}_eval") or {}).get("parsed_result")
      if not parsed or not parsed.get("scores"):
        break
      block = by_index[item["index"]][f"rubrics_{d}"]
      raw = mx = 0.0
      for pos, score in enumerate(parsed["scores"]):
        if f"s{pos + 1}" not in block:
          continue
        sign = 1 if block[f"s{pos + 1}"] == "+1" else -1
        w = float(block[f"w{pos + 1}"])
        raw += sign * w if score == 1 else 0.0
        mx += w if sign > 0 else 0.0
      per_dim.append(0.0 if mx <= 0 else max(0.0, raw / mx * 100))
      rs, ms = rs + raw, ms + mx
    if len(per_dim) != 3:
      continue
    total = 0.0 if ms <= 0 else max(0.0, rs / ms * 100)
    totals.append(total)
    for d, v in zip(DIMENSIONS, per_dim):
      dims[d].append(v)
    cats.setdefault(labels[item["index"]], []).append(total)
  avg = lambda v: sum(v) / len(v) if v else 0.0
  return len(totals), avg(totals), {c: avg(v) for c, v in cats.items()}, {d: avg(v) for d, v in dims.items()}


def test_official_mode_equals_official_formula_on_official_files():
  norm_path, tasks_path = official_file("MWBenchRubrics_norm.json"), official_file("finaltasks.json")
  with open(norm_path, encoding="utf-8") as f:
    norm = json.load(f)
  with open(tasks_path, encoding="utf-8") as f:
    labels = {t["index"]: t["final_label"] for t in json.load(f)}
  rubrics = load_rubrics(norm_path, tasks_path)
  rng = random.Random(0)
  results = []
  for t in norm:
    item = {"index": t["index"], "video_path": f"{t['index']}.mp4"}
    for d in DIMENSIONS:
      kind = rng.random()
      if kind < 0.03:
        continue  # Dimension missing.
      if kind < 0.06:
        item[f"{d}_eval"] = {"raw_response": "?", "parsed_result": None}
        continue
      n = 5 if kind < 0.8 else rng.choice([0, 1, 2, 3, 4, 6, 7])
      item[f"{d}_eval"] = {"raw_response": "", "parsed_result": {"scores": [rng.choice([0, 1]) for _ in range(n)]}}
    results.append(item)
  valid, overall, cats, dims = _official_oracle(results, norm, labels)
  s = summarize(score_model("m", results, rubrics, "official"))
  assert s["valid_tasks"] == valid > 300
  assert s["overall"] == pytest.approx(overall, abs=1e-9)
  assert s["categories"] == pytest.approx(cats, abs=1e-9)
  assert s["dimensions"] == pytest.approx(dims, abs=1e-9)

  # The 55 blocks numbered d11..d55 score 0 in official mode and count in strict mode.
  def all_met(index, d):
    return {"parsed_result": {"scores": [1] * len(rubrics.tasks[index].criteria[d])}}

  full = [{"index": t["index"], **{f"{d}_eval": all_met(t["index"], d) for d in DIMENSIONS}} for t in norm]
  official = {t.index: t for t in score_model("m", full, rubrics, "official").tasks}
  strict = {t.index: t for t in score_model("m", full, rubrics, "strict").tasks}
  assert len(official) == len(strict) == 459
  assert official[2].dimensions[2] == 0.0 and strict[2].dimensions[2] == 100.0  # Task 2: d11 instruction.
  assert official[60].dimensions[0] == 0.0 and strict[60].dimensions[0] > 0.0
  assert official[1].dimensions == strict[1].dimensions


def test_bootstrap_ci():
  rng = np.random.default_rng(0)
  assert bootstrap_ci([40.0] * 7, 500, rng) == [40.0, 40.0]
  assert bootstrap_ci([], 500, rng) is None
  values = [0.0, 100.0] * 50
  lo, hi = bootstrap_ci(values, 2000, np.random.default_rng(1))
  assert 35 < lo < 50 < hi < 65  # Mean 50, standard error 5.
  assert bootstrap_ci(values, 2000, np.random.default_rng(1)) == [lo, hi]


def test_aggregate_cli_writes_json_markdown_and_plots(hand_case, tmp_path):
  rubrics, results, res, rpath, tpath = hand_case
  other = tmp_path / "Other_result.json"
  other.write_text(json.dumps([dict(r, index=r["index"]) for r in results[:1]]))
  out_json, out_md, plots = tmp_path / "s.json", tmp_path / "r.md", tmp_path / "plots"
  rc = main(
    [
      "aggregate",
      "--results",
      res,
      str(other),
      "--rubrics",
      rpath,
      "--tasks",
      tpath,
      "--mode",
      "official",
      "--json",
      str(out_json),
      "--markdown",
      str(out_md),
      "--plots",
      str(plots),
      "--bootstrap",
      "200",
    ]
  )
  assert rc == 0
  summary = json.loads(out_json.read_text())
  assert set(summary["models"]) == {"Hand", "Other"}
  hand = summary["models"]["Hand"]
  assert set(hand) >= {"valid_tasks", "overall", "categories", "dimensions", "ci95"}
  assert set(hand["categories"]) == {"Organ-level", "Cellular-level", "Subcellular-level"}
  assert set(hand["dimensions"]) == {"scientific", "visual", "instruction"}
  assert hand["ci95"]["overall"][0] <= hand["overall"] <= hand["ci95"]["overall"][1]
  assert summary["models"]["Other"]["overall"] == pytest.approx(18.75)
  md = out_md.read_text()
  assert "| Hand | 3 |" in md and "![categories.png](plots/categories.png)" in md
  for name in ("categories.png", "dimensions.png"):
    data = (plots / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert aggregate([res], rubrics, "strict", names=["X"])["models"]["X"]["valid_tasks"] == 2


def test_aggregate_rejects_bad_results(tmp_path, hand_case, capsys):
  _, _, _, rpath, tpath = hand_case
  bad = tmp_path / "Bad_result.json"
  bad.write_text('{"index": 1}')
  assert main(["aggregate", "--results", str(bad), "--rubrics", rpath, "--tasks", tpath]) == 2
  assert "Bad_result.json: expected a JSON list" in capsys.readouterr().err
