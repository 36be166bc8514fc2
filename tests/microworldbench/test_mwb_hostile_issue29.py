"""Hostile inputs of issue 29, each failing on the code before its fix: a resume that mixes judges or
protocols, FIFOs, devices and huge files as inputs, and duplicated or unknown task indices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mwb_judge_server import FakeJudge, truth

from microworldbench.cli import main

pytestmark = pytest.mark.hostile

DIMS = ("scientific", "visual", "instruction")


def _scored(index, **keys):
  """A results entry with every dimension scored, as the official evaluator writes it (plus `keys`)."""
  evals = {f"{d}_eval": {"raw_response": "", "parsed_result": {"scores": truth(index, d, 5)}} for d in DIMS}
  return {"index": index, "video_path": f"{index}.mp4", **evals, **keys}


def _evaluate(paths, url, *extra):
  args = ["evaluate", "--videos", paths["videos"], "--rubrics", paths["rubrics"], "--out", paths["out"]]
  return main([*args, "--judge_url", url, "--judge_model", "judge-y", "--concurrency", "2", "--no_progress", *extra])


def _aggregate(paths, *results):
  args = ["aggregate", "--results", *map(str, results), "--rubrics", paths["rubrics"], "--tasks", paths["tasks"]]
  return main([*args, "--bootstrap", "10"])


def _one_line_error(capsys, command):
  err = capsys.readouterr().err
  assert err.startswith(f"microworldbench {command}: error: ") and len(err.strip().splitlines()) == 1, err
  return err


# --- 1. A resume never mixes an unrecorded judge or protocol with this run's ------------------------


def test_resume_refuses_entries_without_judge_or_protocol(bench_dir, capsys):
  paths = bench_dir(n=3)
  before = [_scored(1), _scored(2, judge_model="judge-y")]  # The official's entry; one from before the protocol key.
  with open(paths["out"], "w") as f:
    json.dump(before, f)
  with FakeJudge() as server:
    assert _evaluate(paths, server.url) == 2
    err = _one_line_error(capsys, "evaluate")
    assert paths["out"] in err and "no judge_model in task 1;" in err and "no protocol in tasks 1, 2" in err
    assert "--adopt" in err and not server.log
    assert _evaluate(paths, server.url, "--adopt", "judge-x:default") == 2  # Must be what this run is.
    assert "--adopt judge-x:default" in _one_line_error(capsys, "evaluate") and not server.log
    assert _evaluate(paths, server.url, "--adopt", "judge-y:default") == 0
    assert "already done 6" in capsys.readouterr().err and len(server.log) == 3
  with open(paths["out"]) as f:
    after = json.load(f)
  assert {(e["index"], e["judge_model"], e["protocol"]) for e in after} == {
    (i, "judge-y", "default") for i in (1, 2, 3)
  }


def test_adopt_splits_at_the_last_colon_and_checks_the_protocol(bench_dir, capsys):
  paths = bench_dir(n=1)
  with pytest.raises(SystemExit):
    _evaluate(paths, "http://127.0.0.1:9", "--adopt", "judge-y")
  assert "JUDGE_MODEL:PROTOCOL" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _evaluate(paths, "http://127.0.0.1:9", "--adopt", "judge-y:offical")
  assert "'default' or 'official'" in capsys.readouterr().err
  with open(paths["out"], "w") as f:
    json.dump([_scored(1)], f)
  with FakeJudge() as server:
    args = ["evaluate", "--videos", paths["videos"], "--rubrics", paths["rubrics"], "--out", paths["out"]]
    model = ["--judge_url", server.url, "--judge_model", "qwen2.5-vl:7b", "--adopt", "qwen2.5-vl:7b:default"]
    assert main([*args, *model, "--no_progress"]) == 0 and not server.log
  with open(paths["out"]) as f:
    assert json.load(f)[0]["judge_model"] == "qwen2.5-vl:7b"


def test_aggregate_refuses_a_file_mixing_judges_or_protocols(bench_dir, tmp_path, capsys):
  paths = bench_dir(n=2)
  mixed = tmp_path / "Mixed_result.json"
  mixed.write_text(json.dumps([_scored(1), _scored(2, judge_model="judge-y", protocol="default")]))
  assert _aggregate(paths, mixed) == 2
  err = _one_line_error(capsys, "aggregate")
  assert "Mixed_result.json" in err and "judge_model differs" in err and "not recorded (task 1)" in err
  protocols = tmp_path / "Protocols_result.json"
  protocols.write_text(json.dumps([_scored(1, protocol="official"), _scored(2, protocol="default")]))
  assert _aggregate(paths, protocols) == 2
  assert "protocol differs" in _one_line_error(capsys, "aggregate")


def test_aggregate_refuses_files_of_different_judges_and_reports_each_judge(bench_dir, tmp_path, capsys):
  paths = bench_dir(n=2)
  files = {}
  for name, keys in (("A", {"judge_model": "judge-x"}), ("B", {"judge_model": "judge-y"}), ("C", {})):
    files[name] = tmp_path / f"{name}_result.json"
    files[name].write_text(json.dumps([_scored(i, protocol="default", **keys) for i in (1, 2)]))
  assert _aggregate(paths, files["A"], files["B"]) == 2
  err = _one_line_error(capsys, "aggregate")
  assert "different judges" in err and "'judge-x'" in err and "'judge-y'" in err
  summary = tmp_path / "s.json"
  assert _aggregate(paths, files["A"], files["C"], "--json", str(summary)) == 0
  out = json.loads(summary.read_text())
  assert (out["judge_model"], out["protocol"]) == ("judge-x", "default")
  assert out["models"]["A"]["judge_model"] == "judge-x" and out["models"]["C"]["judge_model"] is None
  assert "| A | 2 | 0 | 0 | judge-x | default |" in capsys.readouterr().out


# --- 2. FIFOs, devices and huge files ---------------------------------------------------------------


def _cli(*args):
  """The CLI in a subprocess (a FIFO would block this one for ever): (exit status, stderr)."""
  try:
    proc = subprocess.run([sys.executable, "-m", "microworldbench", *args], capture_output=True, text=True, timeout=60)
  except subprocess.TimeoutExpired:
    pytest.fail(f"microworldbench {' '.join(args)} hung")
  return proc.returncode, proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifos_and_devices_are_refused_not_read(bench_dir, tmp_path, kind):
  paths = bench_dir(n=1)
  special = "/dev/zero"
  if kind == "fifo":
    special = str(tmp_path / "pipe")
    os.mkfifo(special)
  judge = [
    "--videos",
    paths["videos"],
    "--out",
    paths["out"],
    "--judge_url",
    "http://127.0.0.1:9",
    "--judge_model",
    "m",
  ]
  runs = [
    ("rubrics", "--rubrics", special),
    ("rubrics", "--rubrics", paths["rubrics"], "--tasks", special),
    ("evaluate", *judge, "--rubrics", paths["rubrics"], "--protocol", "official", "--prompt_template", special),
    ("aggregate", "--results", special, "--rubrics", paths["rubrics"], "--tasks", paths["tasks"]),
    ("physics", "--videos", paths["videos"], "--prompts", special, "--out", str(tmp_path / "p.json")),
  ]
  for args in runs:
    code, err = _cli(*args)
    assert code == 2 and f"{special}: not a regular file" in err and len(err.strip().splitlines()) == 1, (args, err)


def test_huge_inputs_are_refused_with_the_cap_named(bench_dir, tmp_path, monkeypatch, capsys):
  from microworldbench import files, official, rubrics

  paths = bench_dir(n=1)
  big = tmp_path / "big.txt"
  big.write_text("{dim_name} {task_desc} {detailed_req} {rubrics_text}" + " " * (1 << 20))
  with pytest.raises(files.InputTooLarge, match=r"big.txt: larger than 1 MiB"):
    official.load_template(str(big))
  monkeypatch.setattr(rubrics, "MAX_BYTES", 100)
  assert main(["rubrics", "--rubrics", paths["rubrics"]]) == 2
  err = _one_line_error(capsys, "rubrics")
  assert "rubrics.json: larger than 100 bytes" in err


# --- 3. Duplicated and unknown task indices ---------------------------------------------------------


def test_aggregate_refuses_duplicated_and_unknown_indices(bench_dir, tmp_path, capsys):
  paths = bench_dir(n=3)
  results = tmp_path / "M_result.json"
  results.write_text(json.dumps([_scored(1), _scored(2), _scored(1)]))
  assert _aggregate(paths, results) == 2
  assert "M_result.json: task 1 appears twice (entries 0 and 2)" in _one_line_error(capsys, "aggregate")
  results.write_text(json.dumps([_scored(1), _scored(7), _scored(9)]))
  assert _aggregate(paths, results) == 2
  err = _one_line_error(capsys, "aggregate")
  assert "M_result.json: tasks 7, 9 are not in" in err and paths["rubrics"] in err
