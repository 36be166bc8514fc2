"""`--help` of every bench command shows its real program name and its defaults (issue 18 item 10);
progress with a total and an ETA for evaluate, aggregate and physics (issue 18 item 8)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from microworldbench.cli import build_parser, main
from microworldbench.progress import Progress

COMMANDS = ("rubrics", "evaluate", "aggregate", "agreement", "physics")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_the_program_and_shows_defaults(command, capsys):
  with pytest.raises(SystemExit) as e:
    main([command, "--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and out.startswith(f"usage: microworldbench {command} ")
  expected = {
    "rubrics": "(default: 3)",
    "evaluate": "requests in flight (default: 8)",
    "aggregate": "(default: 2000)",
    "physics": "--progress",
    "agreement": "--json",
  }[command]
  assert expected in " ".join(out.split())
  assert "(default: None)" not in out and "(default: False)" not in out


def test_module_help_says_microworldbench_and_old_spellings_still_parse():
  proc = subprocess.run([sys.executable, "-m", "microworldbench", "--help"], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0 and proc.stdout.startswith("usage: microworldbench ")
  args = build_parser().parse_args(
    [
      "evaluate",
      "--videos",
      "v",
      "--rubrics",
      "r",
      "--out",
      "o",
      "--judge-url",
      "http://localhost",
      "--judge-model",
      "m",
      "--num-frames",
      "8",
      "--max-wait",
      "3",
      "--save-interval",
      "1",
      "--no-progress",
    ]
  )
  assert (args.num_frames, args.max_wait, args.progress, args.protocol) == (8, 3.0, False, "default")


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_progress_lines_off_a_terminal_and_tqdm_on_one():
  lines = io.StringIO()
  bar = Progress(4, desc="physics ", stream=lines, unit="video", every=0.0)
  for outcome in ("pass", "fail", "pass", "pass"):
    bar.update(outcome)
  bar.close()
  text = lines.getvalue().splitlines()
  assert len(text) == 4 and text[-1].startswith("physics 4/4 (100%) fail 1 pass 3 | ")
  assert "video/s ETA 0m00s" in text[-1] and "\r" not in lines.getvalue()
  quiet = io.StringIO()
  bar = Progress(4, stream=quiet)  # Default: one line per 30 s, and the last one.
  for _ in range(4):
    bar.update("done")
  assert quiet.getvalue().count("\n") == 1 and "4/4" in quiet.getvalue()
  pytest.importorskip("tqdm")
  tty = _Tty()
  bar = Progress(3, desc="scoring ", stream=tty, unit="file")
  assert bar._tqdm is not None
  for _ in range(3):
    bar.update("done")
  bar.close()
  assert "3/3" in tty.getvalue() and "100%" in tty.getvalue()
  off = io.StringIO()
  bar = Progress(2, stream=off, enabled=False)
  bar.update("x")
  bar.update("x")
  bar.close()
  assert off.getvalue() == ""


def test_physics_and_aggregate_print_progress_with_total_and_eta(tmp_path, bench_dir, capsys):
  from microworldbench.physics.metrics import REQUIRED_PARAMS

  params = {k: 1.0 for k in REQUIRED_PARAMS["brownian"]}
  prompts = tmp_path / "prompts.jsonl"  # Rows whose videos are missing: each fails at once.
  prompts.write_text(
    "".join(json.dumps({"id": f"v{i}", "process": "brownian", "params": params, "size": 64}) + "\n" for i in range(3))
  )
  code = main(["physics", "--videos", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "p.json")])
  err = capsys.readouterr().err
  assert code == 0 and "physics 3/3 (100%) fail 3 | " in err and "ETA" in err
  paths = bench_dir(n=2)
  results = tmp_path / "M_result.json"
  results.write_text(json.dumps([{"index": 1}, {"index": 2}]))
  assert (
    main(
      [
        "aggregate",
        "--results",
        str(results),
        "--rubrics",
        paths["rubrics"],
        "--tasks",
        paths["tasks"],
        "--bootstrap",
        "10",
      ]
    )
    == 0
  )
  err = capsys.readouterr().err
  assert "scoring 1/1 (100%) done 1 | " in err and "ETA" in err
