"""Hostile inputs against the scorer (issue 17, items 2, 4, 5, 7, 8): each test failed on the code
before its fix. Two runs on one --out, a key crossing the cut of an error body, unsafe judge URLs,
hostile journal lines and statuses, ids that would escape a folder, fixed temporary names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from mwb_helpers import make_task
from mwb_judge_server import FakeJudge, truth

from microworldbench import files
from microworldbench.cli import main
from microworldbench.evaluate import evaluate
from microworldbench.judge import Judge, JudgeFatalError, JudgeSettings, build_prompt, check_judge_url, mask_secrets
from microworldbench.rubrics import load_rubrics

pytestmark = pytest.mark.hostile

DIMS = ("scientific", "visual", "instruction")
KEY = "sk-hostile-0123456789abcdef"


def _settings(url, **kw):
  base = dict(url=url, model="judge-x", api_key=KEY, timeout=2.0, retries=2, backoff=0.01, max_wait=1.0)
  base.update(kw)
  return JudgeSettings(**base)


def _evaluate_cli(paths, url, *extra):
  env = dict(os.environ, MICROWORLDBENCH_API_KEY=KEY, PYTHONUNBUFFERED="1")
  cmd = [
    sys.executable,
    "-m",
    "microworldbench",
    "evaluate",
    "--videos",
    paths["videos"],
    "--rubrics",
    paths["rubrics"],
    "--out",
    paths["out"],
    "--judge-url",
    url,
    "--judge-model",
    "judge-x",
    "--concurrency",
    "2",
    "--save-interval",
    "0.2",
    "--no-progress",
    *extra,
  ]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _scored(path):
  with open(path) as f:
    return {
      (item["index"], d): item[f"{d}_eval"]["parsed_result"]["scores"]
      for item in json.load(f)
      for d in DIMS
      if item.get("status", {}).get(d, {}).get("state") == "scored"
    }


# --- 2. Two runs on one --out -----------------------------------------------------------------------


def test_second_run_on_one_out_refuses_and_the_first_loses_nothing(bench_dir):
  paths = bench_dir(n=6)
  with FakeJudge(latency=0.8) as server:
    first = _evaluate_cli(paths, server.url)
    deadline = time.monotonic() + 60
    while len(server.log) < 4 and time.monotonic() < deadline:
      time.sleep(0.02)
    with open(paths["out"] + ".lock") as f:
      holder = f.read().split()
    assert holder[0] == str(first.pid)
    t0 = time.monotonic()
    second = _evaluate_cli(paths, server.url)
    out2, err2 = second.communicate(timeout=60)
    assert time.monotonic() - t0 < 30 and second.returncode == 2
    assert f"in use by pid {first.pid}" in err2 and len(err2.strip().splitlines()) == 1, err2
    waiter = _evaluate_cli(paths, server.url, "--wait-for-lock")  # Waits, then finds all done.
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    out3, err3 = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and "already done 18" in err3, err3
    assert len(server.log) == 18  # Nobody judged an item twice.
  assert _scored(paths["out"]) == {(i, d): truth(i, d, 5) for i in range(1, 7) for d in DIMS}
  assert not os.path.exists(paths["out"] + ".journal")


def test_lock_is_released_and_a_dead_holder_does_not_block(tmp_path):
  path = str(tmp_path / "x.lock")
  with files.FileLock(path, "--out x"):
    with pytest.raises(files.LockHeld, match=f"in use by pid {os.getpid()}"):
      files.FileLock(path, "--out x")
  files.FileLock(path, "--out x").release()
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      f"from microworldbench import files; l = files.FileLock({path!r}, 'x'); import os; os._exit(0)",
    ],
    timeout=60,
  )
  assert proc.returncode == 0
  files.FileLock(path, "--out x").release()  # The dead process's lock went with it.


# --- 7. Secrets and judge URLs ----------------------------------------------------------------------


def _task(index=3):
  paths_task = make_task(index)
  from microworldbench.rubrics import Criterion, Task

  crit = {d: tuple(Criterion(i, paths_task[f"rubrics_{d}"][f"d{i}"], 1, 1.0) for i in range(1, 6)) for d in DIMS}
  return Task(index, paths_task["task"], paths_task["requirement"], None, crit, {})


def _images(level):
  return ["data:image/jpeg;base64,AAAA"]


def test_key_crossing_the_cut_of_an_error_body_is_masked():
  body = ("x" * 290 + KEY + " and again " + KEY).encode()
  with FakeJudge({(3, "visual"): ["400"]}, error_body=body) as server:
    verdict = Judge(_settings(server.url)).judge(build_prompt(_task(), "visual", 2), _images, 5)
  assert not verdict.ok and verdict.reason.startswith("HTTP 400")
  assert KEY[:6] not in verdict.reason and "***" in verdict.reason


def test_url_userinfo_and_key_never_reach_messages_or_reprs():
  assert (
    mask_secrets("GET https://bob:hunter2@judge.example/v1 failed", ()) == "GET https://***@judge.example/v1 failed"
  )
  settings = _settings("http://127.0.0.1:9")
  assert KEY not in repr(settings) and KEY not in str(settings)
  with FakeJudge(default="401") as server:
    url = server.url.replace("http://", "http://bob:hunter2@")
    with pytest.raises(JudgeFatalError, match="HTTP 401") as e:
      Judge(_settings(url)).judge(build_prompt(_task(), "visual", 2), _images, 5)
  assert "hunter2" not in str(e.value) and KEY not in str(e.value)


@pytest.mark.parametrize(
  "url, ok",
  [
    ("https://api.openai.com/v1", True),
    ("http://localhost:8000", True),
    ("http://127.0.0.1:8000/v1", True),
    ("http://[::1]:8000", True),
    ("http://judge.example.com/v1", False),
    ("ftp://localhost/x", False),
    ("file:///etc/passwd", False),
    ("127.0.0.1:8000", False),
    ("http://", False),
  ],
)
def test_judge_url_must_be_https_or_local_http(url, ok):
  if ok:
    assert check_judge_url(url) == url
  else:
    with pytest.raises(ValueError, match="--judge_url"):
      check_judge_url(url)
  assert check_judge_url("http://judge.example.com/v1", allow_insecure=True)
  with pytest.raises(ValueError):
    check_judge_url("ftp://localhost/x", allow_insecure=True)


def test_insecure_url_is_refused_by_the_cli_before_anything_is_written(bench_dir, capsys):
  paths = bench_dir(n=2)
  args = [
    "evaluate",
    "--videos",
    paths["videos"],
    "--rubrics",
    paths["rubrics"],
    "--out",
    paths["out"],
    "--judge-model",
    "m",
    "--judge-url",
  ]
  assert main(args + ["http://judge.example.com"]) == 2
  assert "--allow-insecure-url" in capsys.readouterr().err
  assert not os.path.exists(paths["out"]) and not os.path.exists(paths["out"] + ".lock")


def test_url_errors_stop_the_run_at_once(bench_dir):
  paths = bench_dir(n=6)
  rubrics = load_rubrics(paths["rubrics"])
  with FakeJudge() as server:
    refused = server.url  # Nobody listens there once the server is closed.
  for url, why in ((refused, "connection refused"), ("http://no-such-host.invalid:9", "does not resolve")):
    t0 = time.monotonic()
    summary = evaluate(
      rubrics,
      paths["videos"],
      paths["out"],
      _settings(url, retries=4, backoff=0.5, allow_insecure_url=True),
      concurrency=2,
    )
    assert summary.fatal and why in summary.fatal and "--judge_url" in summary.fatal
    assert summary.failed == 0 and time.monotonic() - t0 < 10  # No retries, no items failed.


# --- 8. Hostile journal lines and statuses ----------------------------------------------------------


def test_resume_skips_and_counts_hostile_journal_lines(bench_dir):
  paths = bench_dir(n=3)
  good = {
    "index": 1,
    "video_path": "v",
    "dimension": "scientific",
    "judge_model": "judge-x",
    "protocol": "default",
    "eval": {"raw_response": "r", "parsed_result": {"scores": truth(1, "scientific", 5), "reasoning": ""}},
    "status": {"state": "scored", "reason": None, "requests": 1, "criteria": [1, 2, 3, 4, 5]},
  }
  cut = json.dumps(dict(good, index=2, video_path="vidéo"), ensure_ascii=False).encode()
  cut = cut[: cut.index("é".encode()) + 1]  # Ends inside a two-byte character.
  lines = [
    json.dumps(good).encode(),
    cut,
    b"[]",
    b"{}",
    json.dumps(dict(good, dimension="smell")).encode(),
    json.dumps(dict(good, index="2")).encode(),
    json.dumps(dict(good, status="scored")).encode(),
    b"\xff\xfe\x00garbage",
  ]
  with open(paths["out"] + ".journal", "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  with FakeJudge() as server:
    summary = evaluate(load_rubrics(paths["rubrics"]), paths["videos"], paths["out"], _settings(server.url))
    asked = {e["item"] for e in server.log}
  assert summary.already_done == 1 and summary.scored == 8 and (1, "scientific") not in asked
  assert len(summary.skipped_journal_lines) == 7
  assert "7 journal lines skipped" in summary.report()
  assert "line 5: unknown dimension 'smell'" in summary.skipped_journal_lines
  assert _scored(paths["out"]) == {(i, d): truth(i, d, 5) for i in range(1, 4) for d in DIMS}


@pytest.mark.parametrize("status", ["scored", [1], {"scientific": "scored"}, {"scientific": {"reason": 1}}])
def test_aggregate_names_the_task_of_a_malformed_status(tmp_path, bench_dir, capsys, status):
  paths = bench_dir(n=2)
  results = tmp_path / "M_result.json"
  results.write_text(json.dumps([{"index": 1}, {"index": 2, "status": status}]))
  code = main(["aggregate", "--results", str(results), "--rubrics", paths["rubrics"], "--tasks", paths["tasks"]])
  err = capsys.readouterr().err
  assert code == 2 and "task 2: malformed 'status'" in err and len(err.strip().splitlines()) == 1, err
  assert "Traceback" not in err


# --- 4 and 5. Ids that become file names; atomic writes ---------------------------------------------


def test_physics_ids_must_be_safe_and_unique_before_anything_runs(tmp_path, capsys, monkeypatch):
  from microworldbench.physics import command

  row = {"process": "brownian", "params": {"diffusion": 1.0}, "size": 64}
  ids = ["ok", "../escape", "/abs/x", ".hidden", "a b", "ok", "fine"]
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(dict(row, id=i)) + "\n" for i in ids))
  monkeypatch.setattr(command.metrics, "validate_row", lambda row, where: None)
  read = []
  monkeypatch.setattr(command, "read_video", lambda path: read.append(path))
  code = main(["physics", "--videos", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "o.json")])
  err = capsys.readouterr().err
  assert code == 2 and not read and not (tmp_path / "o.json").exists()
  assert len(err.strip().splitlines()) == 1 and "5 bad ids" in err
  for line in (2, 3, 4, 5):
    assert f"prompts.jsonl:{line}: id" in err
  assert "prompts.jsonl:6: id 'ok' repeats" in err and "prompts.jsonl:1" in err and ":7" not in err


def test_write_atomic_replaces_leaves_nothing_behind_and_keeps_the_old_file_on_error(tmp_path, monkeypatch):
  path = str(tmp_path / "out.json")
  synced = []
  monkeypatch.setattr(files, "_fsync_dir", lambda folder: synced.append(folder))
  files.write_atomic(path, "one")
  files.write_json_atomic(path, {"two": 2})
  assert json.load(open(path)) == {"two": 2} and synced == [str(tmp_path)] * 2
  with pytest.raises(ValueError):
    files.write_json_atomic(path, {"nan": float("nan")})  # Never a bare NaN in a file.
  assert json.load(open(path)) == {"two": 2} and os.listdir(tmp_path) == ["out.json"]
  errors = []

  def writer(n):
    try:
      for i in range(20):
        files.write_json_atomic(path, {"writer": n, "i": i})
    except Exception as e:  # noqa: BLE001
      errors.append(e)

  threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and os.listdir(tmp_path) == ["out.json"] and json.load(open(path))["i"] == 19


def test_writers_use_unique_temporary_names(tmp_path, bench_dir):
  """A stale temporary left by the old fixed names (here a folder, so that it cannot be reused)
  does not stop a write: every writer goes through files.atomic_path."""
  pytest.importorskip("matplotlib")
  paths = bench_dir(n=3)
  results = tmp_path / "M_result.json"
  results.write_text(json.dumps([{"index": i} for i in range(1, 4)]))
  plots, report = tmp_path / "plots", tmp_path / "report.md"
  plots.mkdir()
  for stale in (plots / ".categories.tmp.png", tmp_path / f"report.md.tmp.{os.getpid()}"):
    stale.mkdir()
  args = [
    "aggregate",
    "--results",
    str(results),
    "--rubrics",
    paths["rubrics"],
    "--tasks",
    paths["tasks"],
    "--markdown",
    str(report),
    "--plots",
    str(plots),
    "--json",
    str(tmp_path / "s.json"),
    "--bootstrap",
    "10",
  ]
  assert main(args) == 0 and main(args) == 0  # And again over the files of the first run.
  assert (plots / "categories.png").stat().st_size > 0 and report.read_text().startswith("# MicroWorldBench")
  assert sorted(p.name for p in plots.iterdir()) == [".categories.tmp.png", "categories.png", "dimensions.png"]
