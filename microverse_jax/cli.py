"""What every command-line tool of the library shares: one-line errors, quiet logs, progress.

cli.run(main)   absl's app.run, but an expected user error (a mistyped config key, a missing file,
                a ValueError from validation, a module that is not installed) prints one line naming
                it and exits with status 2; `--verbose` shows the traceback and INFO logs.
cli.main_guard(main)
                the same for an argparse CLI (convert, encode, build_dataset): `main(argv)` runs with
                one-line errors (exit status 2), `--verbose` shows the traceback.
cli.argument_parser(doc, prog)
                an argparse parser whose --help keeps the docstring's line breaks, shows each
                option's default and names the program as it is run (`python -m microverse_jax.X`).
"""

from __future__ import annotations

import argparse
import copy
import glob
import logging as std_logging
import os
import re
import sys
import time
import traceback
from typing import Callable, Iterable, Iterator

from absl import app, flags, logging

from microverse_jax import dependencies

USER_ERRORS = (ValueError, OSError, FloatingPointError, KeyError, AttributeError, TypeError, flags.Error)

flags.DEFINE_bool("verbose", False, "Show tracebacks and INFO logs (Orbax, JAX).")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def describe(error: BaseException, argv: list[str]) -> str:
  """One line for an expected error: names the flag, key or file at fault."""
  text = str(error.args[0]) if error.args else str(error)
  text = text.removeprefix("Configuration is not available because of an earlier failure to load: ")  # config_flags'
  if isinstance(error, OSError) and error.filename:
    return f"{error.strerror}: {error.filename}"
  if isinstance(error, (AttributeError, KeyError)) and _raised_by_the_config(error):
    guess = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    key = guess.group(2) if guess else re.sub(r"[\\'\"]", "", text).split("\\n")[0].split("\n")[0]
    given = [a.split("=")[0] for a in argv if a.startswith("--config.") and a.split("=")[0].endswith(f".{key}")]
    where = given[0] if given else f"config key {key!r}"
    return f"{where}: no such config key" + (f' (did you mean "{guess.group(1)}"?)' if guess else "")
  if "Attempted" in text and "No such file" in text:  # config_flags lists the paths it tried
    lines = text.splitlines()
    tried = [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line.strip().startswith("Attempted")]
    return f"config file not found: {tried[0] if tried else lines[0]}"
  if isinstance(error, (AttributeError, KeyError, TypeError)):  # not a config key: say what it is
    return f"{type(error).__name__}: {' '.join(text.split())}"
  return " ".join(text.split())


def _raised_by_the_config(error: BaseException) -> bool:
  """Whether the innermost frame of the error is ml_collections' (a config key lookup or override)."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and f"{os.sep}ml_collections{os.sep}" in tb.tb_frame.f_code.co_filename


def _quiet_logs() -> None:
  """Warnings and errors only, from absl and the libraries' own loggers (Orbax's INFO lines flood)."""
  logging.set_verbosity(logging.WARNING)
  for name in ("absl", "orbax", "jax", "grain"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)


def _select_platform() -> None:
  """On a machine without a TPU, JAX skips probing libtpu (installed by the test extra), which
  otherwise prints TPU initialisation errors."""
  if os.environ.get("JAX_PLATFORMS"):
    return
  if not (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*")):
    import jax

    jax.config.update("jax_platforms", "cpu")


def run(main: Callable[[list[str]], None], *, saved_config: bool = False) -> None:
  """Runs `main` under absl with the error and logging conventions above; `saved_config`: a missing
  --config defaults to the --workdir's saved config.json."""
  verbose = "--verbose" in sys.argv

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except USER_ERRORS as e:
      if verbose:
        raise
      _fail(describe(e, argv))
    except SystemExit as e:  # absl exits 1 after printing --help; asking for help is no error
      if e.code == 1 and any(a in ("--help", "-h", "-?", "--helpfull", "--helpshort") for a in argv):
        sys.exit(0)
      raise

  def wrapped(argv):
    _select_platform()
    if not verbose:
      _quiet_logs()
    try:
      main(argv)
    except ImportError as e:
      dependencies.exit_on_missing(e, verbose)
    except USER_ERRORS as e:
      if verbose:
        raise
      _fail(describe(e, argv))
    except KeyboardInterrupt:
      _fail("interrupted")

  app.run(wrapped, argv=with_saved_config(sys.argv) if saved_config else sys.argv, flags_parser=parse)


def progress(items: Iterable, total: int, desc: str, *, every_s: float = 30.0) -> Iterator:
  """Yields `items`, showing done/total, rate and ETA: a tqdm bar on a terminal, else a plain line
  every `every_s` seconds and at the end."""
  if sys.stderr.isatty():
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
    return
  start = last = time.time()
  done = 0
  for done, item in enumerate(items, 1):
    yield item
    now = time.time()
    if now - last >= every_s or done == total:
      print(progress_line(desc, done, total, now - start), flush=True)
      last = now


def progress_line(desc: str, done: int, total: int, elapsed: float, extra: str = "") -> str:
  """'desc 50/2400 (2%) 4.2/s ETA 9m20s extra'."""
  rate = done / elapsed if elapsed > 0 else 0.0
  eta = (total - done) / rate if rate > 0 else float("nan")
  return f"{desc} {done}/{total} ({100 * done / max(total, 1):.0f}%) {rate:.3g}/s ETA {format_seconds(eta)}" + (
    f" {extra}" if extra else ""
  )


def format_seconds(s: float) -> str:
  if s != s:
    return "?"
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def with_saved_config(argv: list[str]) -> list[str]:
  """argv with `--config` pointing at WORKDIR/config.json when no --config is given but --workdir is
  (`--config.key=value` overrides then apply to the saved config)."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    return argv
  workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), None)
  if workdir is None and "--workdir" in argv[:-1]:
    workdir = argv[argv.index("--workdir") + 1]
  if workdir is None:
    return argv
  from microverse_jax import saved_config

  return [argv[0], f"--config={saved_config.__file__}:{workdir}", *argv[1:]]


# ------------------------------------------------------------------------------ argparse CLIs
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's line breaks (backslash continuations included), shows every option's
  meaningful default, and names an option's value once: `--out DIR, --dst`."""

  @staticmethod
  def _shows_default(action: argparse.Action) -> bool:
    text = action.help or ""
    return not (
      not action.option_strings
      or action.required
      or "default" in text
      or action.default in (None, False, argparse.SUPPRESS)
    )

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if not self._shows_default(action):
      return text
    return f"{text} (default: %(default)s)" if text else "default: %(default)s"

  def _format_action(self, action: argparse.Action) -> str:
    if not action.help and self._shows_default(action):  # argparse shows no help line at all otherwise
      action = copy.copy(action)
      action.help = "default: %(default)s"
    return super()._format_action(action)

  def _format_action_invocation(self, action: argparse.Action) -> str:
    if not action.option_strings or action.nargs == 0:
      return super()._format_action_invocation(action)
    value = self._format_args(action, self._get_default_metavar_for_optional(action))
    return ", ".join([f"{action.option_strings[0]} {value}", *action.option_strings[1:]])


def argument_parser(doc: str | None, prog: str) -> argparse.ArgumentParser:
  """A parser with the library's --help conventions (see `HelpFormatter`) and `--verbose`."""
  parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter, allow_abbrev=False)
  parser.add_argument("--verbose", action="store_true", help="on an error, show the whole traceback")
  return parser


def main_guard(
  main: Callable[[list[str]], object],
  argv: list[str] | None = None,
  errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> None:
  """Runs an argparse CLI's `main(argv)`: an expected user error (a bad path, weights, layout: a
  ValueError or OSError; a module that is not installed) prints one line `error: ...` naming the file
  or key, and exits with status 2; with `--verbose` the traceback comes first. Logs are quiet unless --verbose."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv
  if "jax" in sys.modules:
    _select_platform()
  if not verbose:
    _quiet_logs()
  try:
    main(argv)
  except ImportError as e:
    dependencies.exit_on_missing(e, verbose)
  except errors as e:
    if verbose:
      traceback.print_exc()
    _fail(describe(e, argv))
  except KeyboardInterrupt:
    _fail("interrupted")
