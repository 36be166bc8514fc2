"""`evaluate` end to end against the fault-injecting localhost judge: every item ends scored as the
server meant or failed with its reason; resume redoes only failed/missing items; kill -9 loses nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mwb_helpers import write_gray_video
from mwb_judge_server import FakeJudge, truth

from microworldbench.evaluate import _parse_indices, evaluate, find_videos
from microworldbench.judge import JudgeSettings
from microworldbench.progress import Progress
from microworldbench.rubrics import load_rubrics

DIMS = ("scientific", "visual", "instruction")
KEY = "sk-evaluate-SECRET"


def _settings(url, **kw):
  base = dict(url=url, model="judge-x", api_key=KEY, timeout=0.5, retries=2, backoff=0.01, max_wait=1.0)
  base.update(kw)
  return JudgeSettings(**base)


def _units(results):
  """{(index, dim): (state, scores or None, reason)} from a results list."""
  out = {}
  for item in results:
    for d in DIMS:
      if f"{d}_eval" in item:
        st = item["status"][d]
        out[(item["index"], d)] = (
          st["state"],
          item[f"{d}_eval"]["parsed_result"] and item[f"{d}_eval"]["parsed_result"]["scores"],
          st["reason"],
        )
  return out


PLANS = {
  (1, "scientific"): ["500", "ok"],
  (1, "visual"): ["429", "ok"],
  (2, "scientific"): ["timeout", "ok"],
  (2, "instruction"): ["malformed", "ok"],
  (3, "visual"): ["short"] * 3,
  (3, "instruction"): ["long", "ok"],
  (4, "scientific"): ["bad_value"] * 3,
  (5, "visual"): ["prose", "ok"],
  (5, "instruction"): ["fence"],
  (5, "scientific"): ["413", "413", "ok"],
}
FAILED = {
  (3, "visual"): 'invalid reply: "scores" has 4 values, expected 5 (after 3 requests)',
  (4, "scientific"): 'invalid reply: "scores" holds 2, expected only 0 or 1 (after 3 requests)',
}


def test_faults_then_resume(bench_dir):
  paths = bench_dir(n=7, videos=6)
  with open(os.path.join(paths["videos"], "6.mp4"), "wb") as f:
    f.write(b"garbage" * 50)
  write_gray_video(os.path.join(paths["videos"], "5.mp4"), size=(96, 128), texture=True)
  rubrics = load_rubrics(paths["rubrics"], paths["tasks"])
  with FakeJudge(PLANS, hang=1.0, retry_after="0") as server:
    summary = evaluate(rubrics, paths["videos"], paths["out"], _settings(server.url), concurrency=4)
    log = list(server.log)
  # Exactly the planned requests (one per item without a plan); none for the unreadable video.
  expected_requests = sum(len(PLANS.get((i, d), ["ok"])) for i in range(1, 6) for d in DIMS)
  assert len(log) == expected_requests and not any(e["item"][0] == 6 for e in log)
  sizes = [e["image_bytes"] for e in log if e["item"] == (5, "scientific")]
  assert sizes[0] > sizes[1] > sizes[2]  # 413: re-encoded smaller.
  assert sizes[0] == next(e["image_bytes"] for e in log if e["item"] == (5, "visual"))
  assert summary.scored == 13 and summary.failed == 5 and summary.missing_videos == [7]
  report = summary.report()
  assert "1 tasks have no video: 7" in report and "failed: task 3 visual: invalid reply" in report
  assert "unreadable video: " in report and "failures by reason:" in report
  with open(paths["out"]) as f:
    text = f.read()
  assert KEY not in text and not os.path.exists(paths["out"] + ".journal")
  results = json.loads(text)
  assert [r["index"] for r in results] == [1, 2, 3, 4, 5, 6]
  assert set(results[0]) >= {"index", "video_path", "scientific_eval", "visual_eval", "instruction_eval"}
  units = _units(results)
  for i in range(1, 6):
    for d in DIMS:
      state, scores, reason = units[(i, d)]
      if (i, d) in FAILED:
        assert (state, scores, reason) == ("failed", None, FAILED[(i, d)])
      else:
        assert (state, scores) == ("scored", truth(i, d, 5)), (i, d, reason)
        assert results[i - 1]["status"][d]["requests"] == len(PLANS.get((i, d), ["ok"]))
  for d in DIMS:
    state, scores, reason = units[(6, d)]
    assert state == "failed" and scores is None and reason.startswith("unreadable video")

  # Resume: only the failed items are asked again (the unreadable video fails again without a request).
  with FakeJudge() as server:
    summary = evaluate(rubrics, paths["videos"], paths["out"], _settings(server.url), concurrency=4)
    asked = {e["item"] for e in server.log}
  assert asked == set(FAILED) and len(server.log) == 2
  assert summary.already_done == 13 and summary.scored == 2 and summary.failed == 3
  with open(paths["out"]) as f:
    units = _units(json.load(f))
  for i in range(1, 6):
    for d in DIMS:
      assert units[(i, d)][:2] == ("scored", truth(i, d, 5))

  # Another judge model may not resume into the same file.
  with pytest.raises(ValueError, match="judged by \\['judge-x'\\], not 'judge-y'"):
    evaluate(rubrics, paths["videos"], paths["out"], _settings("http://127.0.0.1:9", model="judge-y"))


def test_indices_select_tasks(bench_dir):
  assert _parse_indices("1-3,7") == {1, 2, 3, 7} and _parse_indices(None) is None
  with pytest.raises(ValueError, match="'x' is not N or N-M"):
    _parse_indices("1,x")
  paths = bench_dir(n=6)
  with FakeJudge() as server:
    summary = evaluate(
      load_rubrics(paths["rubrics"]), paths["videos"], paths["out"], _settings(server.url), indices={2, 5}
    )
    assert {e["item"][0] for e in server.log} == {2, 5} and summary.scored == 6


def test_auth_failure_stops_the_run(bench_dir):
  paths = bench_dir(n=6)
  rubrics = load_rubrics(paths["rubrics"])
  with FakeJudge(default="401") as server:
    summary = evaluate(rubrics, paths["videos"], paths["out"], _settings(server.url), concurrency=2)
    n = len(server.log)
  assert summary.fatal and "HTTP 401" in summary.fatal and KEY not in summary.fatal
  assert n <= 2  # Only the requests already in flight.


def _cli(paths, url, concurrency=2):
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
    "--tasks",
    paths["tasks"],
    "--out",
    paths["out"],
    "--judge-url",
    url,
    "--judge-model",
    "judge-x",
    "--concurrency",
    str(concurrency),
    "--timeout",
    "5",
    "--backoff",
    "0.01",
    "--save-interval",
    "0.3",
    "--no-progress",
  ]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done_units(paths):
  """Items recorded as scored on disk (results file plus journal), as a killed run left them."""
  done = set()
  if os.path.exists(paths["out"]):
    with open(paths["out"]) as f:
      done |= {k for k, v in _units(json.load(f)).items() if v[0] == "scored"}
  if os.path.exists(paths["out"] + ".journal"):
    with open(paths["out"] + ".journal") as f:
      for line in f:
        try:
          e = json.loads(line)
        except json.JSONDecodeError:
          continue
        if e["status"]["state"] == "scored":
          done.add((e["index"], e["dimension"]))
  return done


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_and_resume_loses_nothing(bench_dir, sig):
  paths = bench_dir(n=10)
  with FakeJudge(latency=0.1) as server:
    proc = _cli(paths, server.url)
    deadline = time.monotonic() + 60
    while len(server.log) < 10 and time.monotonic() < deadline and proc.poll() is None:
      time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), err
    done = _done_units(paths)
    split = len(server.log)
    assert 0 < len(done) < 30
    if sig == signal.SIGTERM:  # Graceful: everything finished is in the file, no journal left.
      assert not os.path.exists(paths["out"] + ".journal")
    proc = _cli(paths, server.url, concurrency=4)
    out2, err2 = proc.communicate(timeout=60)
    assert proc.returncode == 0, err2
    second = [e["item"] for e in server.log[split:]]
  assert not set(second) & done  # Finished items were not asked again ...
  assert len(second) == len(set(second)) == 30 - len(done)  # ... and each missing one exactly once.
  with open(paths["out"]) as f:
    units = _units(json.load(f))
  assert units == {(i, d): ("scored", truth(i, d, 5), None) for i in range(1, 11) for d in DIMS}
  assert not os.path.exists(paths["out"] + ".journal")
  assert KEY not in out + err + out2 + err2


def test_find_videos(tmp_path):
  for name in ("1.mp4", "2.mov", "notes.txt", "clip.mp4"):
    (tmp_path / name).write_bytes(b"x")
  found, ignored = find_videos(str(tmp_path))
  assert found == {1: str(tmp_path / "1.mp4"), 2: str(tmp_path / "2.mov")}
  assert ignored == [str(tmp_path / "clip.mp4")]
  (tmp_path / "1.mkv").write_bytes(b"x")
  with pytest.raises(ValueError, match="two videos for task 1"):
    find_videos(str(tmp_path))


def test_progress_bar_draws_counts():
  stream = io.StringIO()
  bar = Progress(3, desc="judging ", enabled=True, stream=stream)
  for outcome in ("scored", "failed", "scored"):
    bar.update(outcome)
  bar.close()
  assert "3/3 failed 1 scored 2" in stream.getvalue()


def test_evaluate_cli_bad_input_is_a_clear_error(bench_dir, tmp_path, capsys):
  from microworldbench.cli import main

  paths = bench_dir(n=2)
  args = [
    "evaluate",
    "--rubrics",
    paths["rubrics"],
    "--out",
    paths["out"],
    "--judge-url",
    "http://127.0.0.1:9",
    "--judge-model",
    "m",
  ]
  assert main(args + ["--videos", str(tmp_path / "nope")]) == 2
  assert "is not a directory" in capsys.readouterr().err
  with open(paths["out"], "w") as f:
    f.write("[{broken")
  assert main(args + ["--videos", paths["videos"]]) == 2
  assert "not valid JSON" in capsys.readouterr().err
  with open(paths["out"]) as f:
    assert f.read() == "[{broken"  # Left untouched.
