"""Commands as argv lists: the trainer command line, config overrides, and a runner that prints
every command (`--dry-run`) or runs it."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence, TextIO

TRAIN_MODULE = "microverse_jax.train"


def base_parser(doc: str | None, workdir_help: str | None = None) -> argparse.ArgumentParser:
  """The flags every launcher takes: --config, --workdir, --dry-run (trainer overrides pass through)."""
  parser = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/FILE.py[:arg]")
  parser.add_argument("--workdir", required=True, help=workdir_help)
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print every command, run none")
  return parser


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """{'optim.lr': 1e-4, 'model.patch_size': (1, 2, 2)} -> ['--config.optim.lr=0.0001', ...]."""
  flags = []
  for key, value in overrides.items():
    if isinstance(value, bool):
      text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
      text = repr(tuple(value))
    elif isinstance(value, (int, float, str)):
      text = str(value)
    else:
      raise ValueError(f"override {key}={value!r}: expected a bool, number, string or tuple")
    flags.append(f"--config.{key}={text}")
  return flags


def check_override_flags(flags: Sequence[str]) -> list[str]:
  """Passes through trainer flags given after the launcher's own (only --config.KEY=VALUE)."""
  for flag in flags:
    if not flag.startswith("--config.") or "=" not in flag:
      raise ValueError(f"unexpected argument {flag!r}: the launcher passes on only trainer config "
                       f"overrides of the form --config.KEY=VALUE")
  return list(flags)


def train_argv(config: str, workdir: str, overrides: Sequence[str] = (), *,
               python: str = "python") -> list[str]:
  """The trainer's command line: python -m microverse_jax.train --config=... --workdir=... [overrides]."""
  if not config or not workdir:
    raise ValueError(f"--config ({config!r}) and --workdir ({workdir!r}) are both required")
  return [python, "-m", TRAIN_MODULE, f"--config={config}", f"--workdir={workdir}", *overrides]


def render(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
  """A shell-ready line: VAR=value ... command args."""
  prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
  return " ".join(prefix + [shlex.join(argv)])


class Runner:
  """Runs argv lists, or only prints them (dry run). Every command is printed before it runs."""

  def __init__(self, dry_run: bool, out: TextIO | None = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout
    self.history: list[list[str]] = []

  def note(self, text: str) -> None:
    print(f"# {text}", file=self.out, flush=True)

  def show(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    argv = [str(a) for a in argv]
    self.history.append(argv)
    print(render(argv, env), file=self.out, flush=True)
    return argv

  def __call__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float | None = None, check: bool = True,
               capture: bool = False) -> subprocess.CompletedProcess | None:
    argv = self.show(argv, env)
    if self.dry_run:
      return None
    result = subprocess.run(argv, timeout=timeout, text=True, capture_output=capture,
                            env={**os.environ, **env} if env else None)
    if check and result.returncode:
      raise RuntimeError(f"command failed with exit code {result.returncode}: {shlex.join(argv)}"
                         + (f"\n{result.stderr[-2000:]}" if capture else ""))
    return result
