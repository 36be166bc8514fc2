"""Agreement between judges: Cohen's kappa by hand, and pairing of per-criterion decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mwb_helpers import make_task

from microworldbench.agreement import agreement, cohen_kappa
from microworldbench.cli import main
from microworldbench.rubrics import load_rubrics


def test_cohen_kappa_by_hand():
  # po = 3/4; p(a=1) = 1/2, p(b=1) = 1/4; pe = 1/8 + 3/8 = 1/2; kappa = (3/4 - 1/2) / (1/2) = 1/2.
  assert cohen_kappa(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
  assert cohen_kappa(np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])) == pytest.approx(-1.0)
  assert cohen_kappa(np.array([1, 1]), np.array([1, 1])) is None  # Both constant: undefined.
  assert cohen_kappa(np.array([]), np.array([])) is None


def _item(index, scores_by_dim, failed=()):
  item = {"index": index, "status": {}}
  for d, s in scores_by_dim.items():
    item[f"{d}_eval"] = {"raw_response": "", "parsed_result": None if d in failed else {"scores": s}}
    item["status"][d] = {"state": "failed" if d in failed else "scored", "reason": None, "criteria": [1, 2, 3, 4, 5]}
  return item


def test_agreement_pairs_only_validly_judged_criteria(tmp_path):
  path = tmp_path / "r.json"
  path.write_text(json.dumps([make_task(1), make_task(2)]))
  rubrics = load_rubrics(str(path))
  a = [
    _item(1, {"scientific": [1, 1, 0, 0, 1], "visual": [1, 1, 1, 1, 1], "instruction": [0, 0, 0, 0, 0]}),
    _item(2, {"scientific": [1, 1, 1, 1, 1], "visual": [0, 0, 0, 0, 0], "instruction": [1, 0, 1, 0, 1]}),
  ]
  b = [
    _item(1, {"scientific": [1, 0, 0, 0, 1], "visual": [1, 1, 1, 1, 1], "instruction": [0, 0, 0, 0, 0]}),
    _item(
      2, {"scientific": [0, 0, 0, 0, 0], "visual": [1, 1, 1], "instruction": [1, 0, 1, 0, 1]}, failed=("scientific",)
    ),
  ]
  result = agreement({"A": a, "B": b}, rubrics)
  (pair,) = result["pairs"]
  # Task 2 scientific failed for B and task 2 visual has 3 scores for 5 criteria: 4 dims x 5 = 20 decisions,
  # one disagreement (task 1 scientific criterion 2).
  assert pair["decisions"] == 20 and pair["tasks"] == 2
  assert pair["percent_agreement"] == pytest.approx(95.0)
  assert pair["dimensions"]["visual"]["decisions"] == 5 and pair["dimensions"]["visual"]["kappa"] is None
  assert pair["dimensions"]["scientific"]["percent_agreement"] == pytest.approx(80.0)
  assert pair["kinds"]["penalty"]["decisions"] == 4  # Criterion 5 is the penalty in each block.
  assert result["mean_kappa"] == pytest.approx(pair["kappa"])
  with pytest.raises(ValueError, match="two or more judges"):
    agreement({"A": a}, rubrics)
  pa, pb = tmp_path / "A_result.json", tmp_path / "B_result.json"
  pa.write_text(json.dumps(a))
  pb.write_text(json.dumps(b))
  out = tmp_path / "agree.json"
  assert main(["agreement", "--results", str(pa), str(pb), "--rubrics", str(path), "--json", str(out)]) == 0
  assert json.loads(out.read_text())["pairs"][0]["decisions"] == 20
