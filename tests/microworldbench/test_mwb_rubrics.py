"""Rubric loading: both key variants, weights, numbering, anomalies, and the official files."""

from __future__ import annotations

import collections
import json

import pytest
from mwb_helpers import make_task, official_file

from microworldbench.rubrics import RubricError, load_rubrics


def _write(tmp_path, tasks, name="r.json"):
  path = tmp_path / name
  path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
  return str(path)


def test_both_text_key_variants_and_weight_types(tmp_path):
  tasks = [make_task(1), make_task(2, norm_keys=True, weights=[1.0, "0.5", 0.2, 0, "1."])]
  rs = load_rubrics(_write(tmp_path, tasks))
  assert rs.tasks[1].task.startswith("TASK-1") and rs.tasks[1].requirement.startswith("Requirement")
  assert rs.tasks[2].task.startswith("TASK-2") and rs.tasks[2].requirement.startswith("Requirement")
  sci = rs.tasks[2].criteria["scientific"]
  assert [c.weight for c in sci] == [1.0, 0.5, 0.2, 0.0, 1.0]
  assert [c.sign for c in sci] == [1, 1, 1, 1, -1]
  counts = rs.anomaly_counts()
  # Weights mix numbers and strings, so strings are reported: "0.5" and "1." (x3 dims) and task 1's
  # "1.0" everywhere (15); "1." is oddly formatted; weight 0 appears once per dim.
  assert counts["string_weight"] == 15 + 6
  assert counts["odd_weight_format"] == 3
  assert counts["zero_weight"] == 3
  assert "renumbered" not in counts and "missing_task_text" not in counts


def test_double_digit_numbering_is_ordered_and_reported(tmp_path):
  rs = load_rubrics(_write(tmp_path, [make_task(1, numbering="double"), make_task(2)]))
  crit = rs.tasks[1].criteria["instruction"]
  assert [c.number for c in crit] == [11, 22, 33, 44, 55]
  assert [c.text for c in crit] == [f"instruction criterion {i} of task 1" for i in range(1, 6)]
  renumbered = [a for a in rs.anomalies if a.code == "renumbered"]
  assert {(a.index, a.dimension) for a in renumbered} == {(1, d) for d in ("scientific", "visual", "instruction")}
  with pytest.raises(RubricError, match="strict_rubrics"):
    load_rubrics(_write(tmp_path, [make_task(1, numbering="double")], "s.json"), strict=True)


def test_criteria_count_and_categories(tmp_path):
  tasks = [make_task(1), make_task(2), make_task(3, k=4)]
  tfile = tmp_path / "t.json"
  tfile.write_text(
    json.dumps([{"index": 1, "final_label": "Organ-level"}, {"index": 2, "final_label": "Cellular-level"}])
  )
  rs = load_rubrics(_write(tmp_path, tasks), str(tfile))
  assert rs.tasks[1].category == "Organ-level" and rs.tasks[3].category is None
  codes = {(a.index, a.code) for a in rs.anomalies}
  assert (3, "criteria_count") in codes and (3, "missing_category") in codes
  assert (1, "criteria_count") not in codes


@pytest.mark.parametrize(
  "mutate, message",
  [
    (lambda t: t["rubrics_visual"].update(w2="heavy"), "task 1 rubrics_visual w2: weight 'heavy' is not a number"),
    (lambda t: t["rubrics_visual"].update(w2=-1.0), "must be a finite number >= 0"),
    (lambda t: t["rubrics_visual"].update(s2="+2"), "s2='\\+2', expected"),
    (lambda t: t.pop("rubrics_instruction"), "has no 'rubrics_instruction'"),
  ],
)
def test_unscoreable_rubrics_raise_naming_the_place(tmp_path, mutate, message):
  task = make_task(1)
  mutate(task)
  path = _write(tmp_path, [task])
  with pytest.raises(RubricError, match=message) as e:
    load_rubrics(path)
  assert path in str(e.value)


def test_duplicate_index_and_incomplete_criterion(tmp_path):
  with pytest.raises(RubricError, match="appears twice"):
    load_rubrics(_write(tmp_path, [make_task(1), make_task(1)]))
  task = make_task(1)
  del task["rubrics_scientific"]["w3"]
  rs = load_rubrics(_write(tmp_path, [task], "b.json"))
  assert [c.number for c in rs.tasks[1].criteria["scientific"]] == [1, 2, 4, 5]
  assert any(a.code == "incomplete_criterion" and "w3" in a.detail for a in rs.anomalies)


def test_official_files_facts():
  orig = load_rubrics(official_file("MWBenchRubrics.json"), official_file("finaltasks.json"))
  norm = load_rubrics(official_file("MWBenchRubrics_norm.json"), official_file("finaltasks.json"))
  for rs in (orig, norm):
    assert len(rs.tasks) == 459
    crit = [c for t in rs.tasks.values() for d in t.criteria.values() for c in d]
    assert len(crit) == 6884
    assert sum(c.sign < 0 for c in crit) == 595
    assert all(t.task.strip() and t.requirement.strip() for t in rs.tasks.values())
    renumbered = [(a.index, a.dimension) for a in rs.anomalies if a.code == "renumbered"]
    assert len(renumbered) == 55
    assert collections.Counter(d for _, d in renumbered) == {"instruction": 50, "scientific": 4, "visual": 1}
    assert {(i, d) for i, d in renumbered if d != "instruction"} == {
      (60, "scientific"),
      (325, "scientific"),
      (330, "scientific"),
      (453, "scientific"),
      (319, "visual"),
    }
    assert [(a.index, a.dimension) for a in rs.anomalies if a.code == "criteria_count"] == [(277, "instruction")]
    assert collections.Counter(t.category for t in rs.tasks.values()) == {
      "Organ-level": 189,
      "Cellular-level": 238,
      "Subcellular-level": 32,
    }
    assert "missing_category" not in rs.anomaly_counts()
  odd = {(a.index, a.detail.split("=")[1].split(" ")[0]) for a in orig.anomalies if a.code == "odd_weight_format"}
  assert {w for _, w in odd} == {"'1.'", "'2'"}
  assert {i for i, w in odd if w == "'1.'"} == {126} and {i for i, w in odd if w == "'2'"} == {148}
  assert {c.weight for t in orig.tasks.values() for d in t.criteria.values() for c in d} == {
    0.5,
    0.7,
    1.0,
    1.5,
    2.0,
    3.0,
  }
  norm_crit = [c for t in norm.tasks.values() for d in t.criteria.values() for c in d]
  assert {c.weight for c in norm_crit} == {0.0, 0.2, 0.5, 1.0}
  assert sum(c.weight == 0 for c in norm_crit) == 884
  assert norm.anomaly_counts()["string_weight"] == 556  # Strings among floats.
  assert "string_weight" not in orig.anomaly_counts()  # All strings: the file's convention.
  with pytest.raises(RubricError):
    load_rubrics(official_file("MWBenchRubrics_norm.json"), strict=True)


def test_rubrics_cli_reports_and_strict_fails(tmp_path, capsys):
  from microworldbench.cli import main

  path = _write(tmp_path, [make_task(1, numbering="double"), make_task(2)])
  assert main(["rubrics", "--rubrics", path]) == 0
  out = capsys.readouterr().out
  assert "30 criteria, 6 penalties" in out and "renumbered x3" in out
  assert main(["rubrics", "--rubrics", path, "--strict-rubrics"]) == 2
  assert "--strict_rubrics: anomalies found" in capsys.readouterr().err
