"""One convention across every CLI (issue 18, items 6 and 10; docs/cli.md): `--help` names the program
as it is run and shows defaults, keeps the docstring's backslash line breaks; underscore flag
spellings, old spellings still parse; an expected user error is one line `error: ...` with exit
status 2, and `--verbose` shows the traceback.

The library's argparse CLIs, the launchers and the bench are checked in-process; the absl CLIs (whose
flags are defined under `__main__`) and the `python -m` wiring of the error handling in subprocesses,
all started at once."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import subprocess
import sys

import pytest

from microverse_jax import build_dataset, cli, convert, encode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL = ("train", "sample", "aot", "fit", "export")
ARGPARSE = {"convert": convert, "encode": encode, "build_dataset": build_dataset}
LAUNCHERS = ("tpu", "xpk", "local", "sweep")
BENCH = ("evaluate", "aggregate", "physics", "rubrics", "agreement")
BAD_PATHS = {  # a missing file or folder each: one line naming it, exit 2
  "convert": (["dit", "--src=/nonexistent/wan", "--out=/tmp/never"], "/nonexistent/wan"),
  "encode": (
    [
      "--dataset=microsim_synth",
      "--data_dir=/nonexistent/tfds",
      "--out=/tmp/never",
      "--vae=/nonexistent/vae",
      "--text_encoder=/nonexistent/t5",
      "--tokenizer=/nonexistent/tok",
    ],
    "/nonexistent/vae",
  ),
  "build_dataset": (["microsim10k", "--manual_dir=/nonexistent/release", "--out=/tmp/never"], "/nonexistent/release"),
  "export": (["--workdir=/nonexistent/run", "--out=/tmp/never"], "/nonexistent/run"),
}


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "120"}


@pytest.fixture(scope="module")
def processes():
  """{key: CompletedProcess-like (returncode, stdout, stderr)}: every subprocess of this file, run
  concurrently."""
  cmds = {f"help {m}": [f"microverse_jax.{m}", "--help"] for m in ABSL}
  cmds |= {f"bad {m}": [f"microverse_jax.{m}", *args] for m, (args, _) in BAD_PATHS.items()}
  running = {
    k: subprocess.Popen(
      [sys.executable, "-m", *c], cwd=REPO, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for k, c in cmds.items()
  }
  done = {}
  for key, proc in running.items():
    out, err = proc.communicate(timeout=300)
    done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  return done


def _docstring_breaks(path: str) -> bool:
  """Whether the module docstring, as written, continues a line with a backslash."""
  src = open(path).read()
  node = ast.parse(src).body[0]
  return "\\\n" in ast.get_source_segment(src, node)


def _argparse_help(main) -> str:
  out = io.StringIO()
  with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(out):
    main(["--help"])
  assert e.value.code == 0
  return out.getvalue()


# ---------------------------------------------------------------------------- --help
@pytest.mark.parametrize("name", ARGPARSE)
def test_argparse_cli_help_names_the_program_shows_defaults_and_keeps_line_breaks(name, monkeypatch):
  monkeypatch.setenv("COLUMNS", "120")
  module = ARGPARSE[name]
  text = _argparse_help(module.main)
  assert text.startswith(f"usage: python -m microverse_jax.{name} [-h] [--verbose]"), text[:200]
  assert f"{name}.py" not in text.splitlines()[0]
  assert "(default: None)" not in text and "(default: False)" not in text
  expected = {
    "convert": "--out DIR, --dst",
    "encode": "--split SPLIT         default: train",
    "build_dataset": "--data_dir DIR, --out",
  }[name]
  assert expected in text
  if name == "encode":
    assert "(default: 8)" in text and "--out DIR, --out_dir" in text
  if _docstring_breaks(module.__file__):
    assert "\\\n" in text  # a backslash continuation stays a line break, not a run of spaces


@pytest.mark.parametrize("name", ABSL)
def test_absl_cli_help_names_the_program_and_shows_defaults(name, processes):
  run = processes[f"help {name}"]
  assert run.returncode == 0, run.stderr[-2000:]  # cli.run: asking for help is no error
  text = run.stdout
  assert f"python -m microverse_jax.{name}" in text and "(default:" in text, text[:2000]
  assert "Traceback" not in run.stderr


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_help_names_the_program_and_keeps_line_breaks(name):
  module = importlib.import_module(f"microverse_jax.launch.{name}")
  text = module.parser().format_help()
  assert text.startswith(f"usage: python -m microverse_jax.launch.{name} ")
  assert "(default:" in text and "--dry_run, --dry-run" in text
  if _docstring_breaks(module.__file__):
    assert "\\\n" in text


@pytest.mark.parametrize("command", BENCH)
def test_bench_help_names_the_program(command, capsys):
  from microworldbench.cli import main

  with pytest.raises(SystemExit) as e:
    main([command, "--help"])
  text = capsys.readouterr().out
  assert e.value.code == 0 and text.startswith(f"usage: microworldbench {command} ")
  assert "--verbose" in text and "(default: None)" not in text


# ---------------------------------------------------------------------------- flag spellings
def test_bench_flags_take_underscores_and_the_old_hyphens():
  from microworldbench.cli import build_parser

  parser = build_parser()
  base = ["--videos", "v", "--rubrics", "r", "--out", "o"]
  new = parser.parse_args(
    [
      "evaluate",
      *base,
      "--judge_url",
      "http://x",
      "--judge_model",
      "m",
      "--num_frames",
      "4",
      "--max_wait",
      "3",
      "--max_tokens",
      "9",
      "--no_json_mode",
      "--save_interval",
      "2",
      "--strict_rubrics",
      "--no_progress",
      "--prompt_template",
      "t",
      "--allow_insecure_url",
      "--wait_for_lock",
    ]
  )
  old = parser.parse_args(
    [
      "evaluate",
      *base,
      "--judge-url",
      "http://x",
      "--judge-model",
      "m",
      "--num-frames",
      "4",
      "--max-wait",
      "3",
      "--max-tokens",
      "9",
      "--no-json-mode",
      "--save-interval",
      "2",
      "--strict-rubrics",
      "--no-progress",
      "--prompt-template",
      "t",
      "--allow-insecure-url",
      "--wait-for-lock",
    ]
  )
  assert vars(new) == vars(old)
  assert (
    new.judge_url,
    new.num_frames,
    new.max_wait,
    new.max_tokens,
    new.no_json_mode,
    new.progress,
    new.strict_rubrics,
    new.wait_for_lock,
  ) == ("http://x", 4, 3.0, 9, True, False, True, True)
  assert parser.parse_args(["evaluate", *base, "--judge_url", "u", "--judge_model", "m"]).progress is None
  assert (
    parser.parse_args(
      ["aggregate", "--results", "a", "--rubrics", "r", "--tasks", "t", "--strict_rubrics", "--progress"]
    ).progress
    is True
  )
  assert parser.parse_args(["rubrics", "--rubrics", "r", "--strict_rubrics"]).strict_rubrics
  physics = parser.parse_args(["physics", "--videos", "v", "--prompts", "p", "--out", "o", "--no_progress"])
  assert physics.progress is False
  for sub in parser._subparsers._group_actions[0].choices.values():  # every flag: an underscore spelling first
    for action in sub._actions:
      long = [o for o in action.option_strings if o.startswith("--")]
      assert not long or "-" not in long[0][2:], long


def test_library_output_flags_are_out_with_old_spellings_kept(tmp_path, monkeypatch):
  seen = {}
  monkeypatch.setattr(convert, "from_checkpoint", lambda src, kind: seen.setdefault("src", src))
  monkeypatch.setattr(convert, "save_params", lambda model, out, kind: seen.setdefault("out", []).append(out))
  monkeypatch.setattr(convert.nnx, "state", lambda *a: {})
  for flag in ("--out", "--dst"):
    convert.main(["dit", "--src", "s", flag, str(tmp_path / flag)])
  assert seen["out"] == [str(tmp_path / "--out"), str(tmp_path / "--dst")]


# ---------------------------------------------------------------------------- user errors
@pytest.mark.parametrize("name", BAD_PATHS)
def test_a_bad_path_is_one_line_and_exit_status_2(name, processes):
  run = processes[f"bad {name}"]
  err = run.stderr.strip().splitlines()
  assert run.returncode == 2, run.stderr[-3000:]
  assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr[-3000:]
  assert BAD_PATHS[name][1] in err[0]


def test_main_guard_is_one_line_and_verbose_shows_the_traceback(capsys):
  def main(argv):
    raise FileNotFoundError(2, "No such file or directory", "/nonexistent/x.json")

  with pytest.raises(SystemExit) as e:
    cli.main_guard(main, [])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err == "error: No such file or directory: /nonexistent/x.json\n"
  with pytest.raises(SystemExit) as e:
    cli.main_guard(main, ["--verbose"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" in err and err.strip().endswith("/nonexistent/x.json")

  def bug(argv):
    raise RuntimeError("a bug, not a user error")

  with pytest.raises(RuntimeError):
    cli.main_guard(bug, [])


def test_bench_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
  from microworldbench.cli import main

  missing = str(tmp_path / "missing.json")
  assert main(["rubrics", "--rubrics", missing]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("microworldbench rubrics: error: ") and missing in err[0]
  assert main(["rubrics", "--rubrics", missing, "--verbose"]) == 2
  assert "Traceback" in capsys.readouterr().err
