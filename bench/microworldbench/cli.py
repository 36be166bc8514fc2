"""The `microworldbench` command. Each subcommand lives in its own module and registers itself
here with one line: a `register_cli(subparsers)` that adds its parser and sets `func`.

Every parser's --help shows the program as `microworldbench <command>` (also under
`python -m microworldbench`), keeps the description's line breaks, and shows each option's default.
Flags are spelled with underscores (`--judge_url`), as in the library's CLIs; the hyphenated
spellings (`--judge-url`) still parse, for one release. Bad input or a missing file is one line
`microworldbench <command>: error: ...` and exit status 2, and so is a package missing from the
environment (naming how to install it); `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback


def subcommands() -> tuple:
  """Each subcommand's module (its `register_cli`), imported here: a missing package is one line (main)."""
  from microworldbench import aggregate, agreement, evaluate, rubrics  # pylint: disable=g-import-not-at-top
  from microworldbench.physics import command as physics  # pylint: disable=g-import-not-at-top

  return (rubrics, evaluate, aggregate, agreement, physics)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Raw descriptions, `(default: X)` after every option that has a meaningful default, and an
  option's value named once: `--judge_url JUDGE_URL, --judge-url`."""

  def _format_action_invocation(self, action: argparse.Action) -> str:
    if not action.option_strings or action.nargs == 0:
      return super()._format_action_invocation(action)
    value = self._format_args(action, self._get_default_metavar_for_optional(action))
    return ", ".join([f"{action.option_strings[0]} {value}", *action.option_strings[1:]])

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if (
      "%(default)" in text
      or not action.option_strings
      or action.required
      or action.default in (None, False, argparse.SUPPRESS)
    ):
      return text
    return f"{text} (default: %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="microworldbench",
    formatter_class=HelpFormatter,
    description="MicroWorldBench scorer: judge videos against the rubrics, aggregate the scores (no JAX).",
  )
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for module in subcommands():
    module.register_cli(subparsers)
  for sub in subparsers.choices.values():
    sub.formatter_class = HelpFormatter
    sub.add_argument("--verbose", action="store_true", help="on an error, show the whole traceback")
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  command = next((a for a in argv if not a.startswith("-")), "")
  try:
    args = build_parser().parse_args(argv)
    return args.func(args)
  except ImportError as e:  # a package this environment lacks
    return _fail(command, e, f"missing module {e.name!r}: pip install -e ./bench (-e './bench[plots]' for plots)", argv)
  except (ValueError, OSError) as e:  # Bad input or a missing file: one clear line, no traceback.
    return _fail(command, e, " ".join(str(e).split()), argv)


def _fail(command: str, error: BaseException, message: str, argv: list[str]) -> int:
  if "--verbose" in argv:
    traceback.print_exception(error)
  print(f"microworldbench {command}: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
