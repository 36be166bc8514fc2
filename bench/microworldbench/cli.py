"""The `microworldbench` command. Each subcommand lives in its own module and registers itself
here with one line: a `register_cli(subparsers)` that adds its parser and sets `func`.

Every parser's --help shows the program as `microworldbench <command>` (also under
`python -m microworldbench`), keeps the description's line breaks, and shows each option's default.
"""
from __future__ import annotations

import argparse
import sys

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
  """Raw descriptions, and `(default: X)` after every option that has a meaningful default."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if ("%(default)" in text or not action.option_strings or action.required
        or action.default in (None, False, argparse.SUPPRESS)):
      return text
    return f"{text} (default: %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="microworldbench", formatter_class=HelpFormatter,
      description="MicroWorldBench scorer: judge videos against the rubrics, aggregate the scores (no JAX).")
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for register in SUBCOMMANDS:
    register(subparsers)
  for sub in subparsers.choices.values():
    sub.formatter_class = HelpFormatter
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, OSError) as e:  # Bad input or a missing file: a clear message, no traceback.
    print(f"microworldbench {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
