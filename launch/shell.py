"""Commands as argv lists: the trainer command line, config overrides, the launchers' shared flags
and error handling, names checked before they reach a shell, and a runner that prints every command
(`--dry_run`) or runs it.

Flags follow absl's convention, like the trainer's: underscores (`--dry_run`, `--accelerator_type`),
booleans as `--flag` / `--noflag`. Older spellings (`--dry-run`, `--tpu_type`, `--no-install`) are kept
as aliases for one release.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from typing import Any, Callable, Mapping, Sequence, TextIO

from microverse_jax.resume import EXIT_PREEMPTED

TRAIN_MODULE = "microverse_jax.train"
INSTALL_EXTRA = "tpu"  # what the workers install: pip install -e ./bench -e ".[tpu]" (setup.cfg)
INSTALL_TARGETS = ("-e", "./bench", "-e", f".[{INSTALL_EXTRA}]")

# Run names (a workdir's last part) become remote file names: keep them to shell-inert characters.
RUN_NAME = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")
ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")  # us-east5-a, europe-west4-b
PROJECT = re.compile(r"([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")  # my-proj, example.com:my-proj
CLUSTER = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")  # GKE: at most 40 characters


class Preempted(RuntimeError):
  """A command stopped by SIGTERM: rerunning the launch resumes the run. `cli` exits 143 on it, as the trainer."""


def raise_if_preempted(code: int, what: str) -> None:
  """Preempted when `what` exited with SIGTERM's status: 143 (the trainer saved, then exited) or killed by it."""
  if code in (EXIT_PREEMPTED, -signal.SIGTERM):
    how = f"saved and exited {EXIT_PREEMPTED}" if code == EXIT_PREEMPTED else "killed by it"
    raise Preempted(f"{what} stopped on SIGTERM ({how}) before its last step: rerun the same launch to resume")


def check_name(value: str | None, flag: str, pattern: re.Pattern, rule: str) -> None:
  """ValueError naming the flag when `value` (if given) does not match `pattern` in full."""
  if value is not None and not pattern.fullmatch(value):
    raise ValueError(f"{flag}={value!r}: {rule}")


def check_zone(zone: str | None) -> None:
  check_name(zone, "--zone", ZONE, "expected a Google Cloud zone such as us-east5-a")


def check_project(project: str | None) -> None:
  check_name(
    project,
    "--project",
    PROJECT,
    "expected a Google Cloud project id (6-30 lowercase letters, digits and '-', starting with a letter)",
  )


def check_cluster(cluster: str | None) -> None:
  check_name(
    cluster,
    "--cluster",
    CLUSTER,
    "GKE cluster names are lowercase letters, digits and '-', start with a letter, at most 40 characters",
  )


def check_run_name(name: str, workdir: str | None = None) -> str:
  """The run name (the workdir's last part) names log files on every worker and here."""
  if not RUN_NAME.fullmatch(name):
    where = f"--workdir={workdir}: its last part {name!r}" if workdir else f"run name {name!r}"
    raise ValueError(
      f"{where} names the run's log files; use only letters, digits and . _ = + - (not starting with '.')"
    )
  return name


def run_name(workdir: str) -> str:
  """gs://b/runs/lora/ -> 'lora', checked."""
  return check_run_name(os.path.basename(workdir.rstrip("/")) or "run", workdir)


# ------------------------------------------------------------------------------ CLI
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the module docstring's line breaks and shows each optional flag's default."""

  def _get_help_string(self, action):
    text = action.help or ""
    if (
      action.required
      or action.default in (None, argparse.SUPPRESS)
      or isinstance(action.default, bool)
      or "%(default)" in text
      or not action.option_strings
    ):
      return text
    return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def program(spec, fallback: str) -> str:
  """The name --help shows: `python -m microverse_jax.launch.tpu`, as the module is run."""
  return f"python -m {spec.name}" if spec is not None and spec.name != "__main__" else fallback


def parser(doc: str | None, prog: str) -> argparse.ArgumentParser:
  """The flags every launcher takes: --dry_run and --verbose."""
  p = argparse.ArgumentParser(prog=prog, description=doc, allow_abbrev=False, formatter_class=HelpFormatter)
  p.add_argument(
    "--dry_run",
    "--dry-run",
    dest="dry_run",
    action="store_true",
    help="check everything, print every command, run none",
  )
  p.add_argument("--verbose", action="store_true", help="on an error, show the whole traceback")
  return p


def base_parser(
  doc: str | None, workdir_help: str | None = None, *, prog: str | None = None
) -> argparse.ArgumentParser:
  """--config, --workdir, --dry_run, --verbose (trainer --config.KEY=VALUE overrides pass through)."""
  p = parser(doc, prog or os.path.basename(sys.argv[0]))
  p.add_argument("--config", required=True, help="configs/FILE.py[:arg], relative to the repo root")
  p.add_argument("--workdir", required=True, help=workdir_help or "the trainer's workdir")
  return p


def cli(main: Callable[[Sequence[str]], Any], argv: Sequence[str] | None = None) -> None:
  """Runs a launcher's main: an expected error (bad flag, config, name, failed command) is one line
  on stderr and exit status 1, with no traceback unless --verbose; a preempted run (Preempted) exits 143,
  as the trainer did, so whatever runs the launcher can rerun it."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    main(argv)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as e:
    if "--verbose" in argv:
      traceback.print_exc()
    sys.exit(f"error: {e}")


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
      raise ValueError(
        f"unexpected argument {flag!r}: the launcher passes on only trainer config "
        f"overrides of the form --config.KEY=VALUE"
      )
  return list(flags)


def train_argv(config: str, workdir: str, overrides: Sequence[str] = (), *, python: str = "python") -> list[str]:
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

  def __call__(
    self,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = False,
  ) -> subprocess.CompletedProcess | None:
    argv = self.show(argv, env)
    if self.dry_run:
      return None
    result = subprocess.run(
      argv, timeout=timeout, text=True, capture_output=capture, env={**os.environ, **env} if env else None
    )
    if check and result.returncode:
      raise_if_preempted(result.returncode, f"command {shlex.join(argv)}")
      raise RuntimeError(
        f"command failed with exit code {result.returncode}: {shlex.join(argv)}"
        + (f"\n{result.stderr[-2000:]}" if capture else "")
      )
    return result
