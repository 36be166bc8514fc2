"""The `microworldbench` command. Each subcommand lives in its own module and registers itself
here with one line: a `register_cli(subparsers)` that adds its parser and sets `func`.

Every parser's --help shows the program as `microworldbench <command>` (also under
`python -m microworldbench`), keeps the description's line breaks, and shows each option's default.
Flags are spelled with underscores (`--judge_url`), as in the library's CLIs; the hyphenated
spellings (`--judge-url`) still parse, for one release. Bad input or a missing file is one line
`microworldbench <command>: error: ...` and exit status 2; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from microworldbench import aggregate, agreement, evaluate, rubrics
from microworldbench.physics import command as physics

SUBCOMMANDS = (
  rubrics.register_cli,
  evaluate.register_cli,
  aggregate.register_cli,
  agreement.register_cli,
  physics.register_cli,
)


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
  for register in SUBCOMMANDS:
    register(subparsers)
  for sub in subparsers.choices.values():
    sub.formatter_class = HelpFormatter
    sub.add_argument("--verbose", action="store_true", help="on an error, show the whole traceback")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, OSError) as e:  # Bad input or a missing file: one clear line, no traceback.
    if args.verbose:
      traceback.print_exc()
    print(f"microworldbench {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
