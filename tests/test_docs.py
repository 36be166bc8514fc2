"""The command lines of README.md and docs/*.md run as written (issue 25, item 6).

Every `python -m microverse_jax...` and `microworldbench ...` line in a shell code block names a module
that exists, spells each flag as its command defines it (never a deprecated alias), and its
`--config=FILE[:arg]` and `--config.KEY=VALUE` load. In process: argparse parsers are built, absl flags
are read from the source with `ast`, config files are imported; nothing runs or compiles."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import re
import shlex
from unittest import mock

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_FENCES = ("", "bash", "sh", "shell")
ABSL = tuple(f"microverse_jax.{m}" for m in ("train", "sample", "aot", "fit", "export"))
ANYWHERE = {"--help", "--helpfull", "--verbose"}  # absl's help and microverse_jax/cli.py's --verbose
ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}


@dataclasses.dataclass(frozen=True)
class Command:
  line: int  # where it starts on its page
  program: str  # a module, or "microworldbench SUBCOMMAND"
  args: tuple[str, ...]


# ---------------------------------------------------------------------------- reading the pages
def shell_lines(text: str):
  """(line number, line) in the shell code blocks, backslash continuations joined."""
  fence, start, joined = None, 0, ""
  for number, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith("```"):
      fence = line.strip()[3:].strip() if fence is None else None
      continue
    if fence not in SHELL_FENCES:
      continue
    start = start if joined else number
    joined += line
    if joined.endswith("\\"):
      joined = joined[:-1] + " "
      continue
    yield start, joined
    joined = ""


def _without_placeholders(tokens: list[str]) -> list[str]:
  """Drops `...` and the optional parts in brackets: `[--dcn_axis=fsdp]`, `[--config.key=value ...]`."""
  kept, optional = [], False
  for token in tokens:
    optional = optional or token.startswith("[")
    if not optional and token != "...":
      kept.append(token)
    optional = optional and not token.endswith("]")
  return kept


def _segments(tokens: list[str]):
  """The commands of a line: split at `&&`, `;`, pipes; leading VAR=value assignments dropped."""
  segment = []
  for token in [*tokens, "&&"]:
    if token in SEPARATORS:
      while segment and ENV.match(segment[0]):
        segment.pop(0)
      yield segment
      segment = []
    else:
      segment.append(token)


def _command(line: int, tokens: list[str]) -> Command | None:
  if tokens[:2] in (["python", "-m"], ["python3", "-m"]) and tokens[2:3] and tokens[2].startswith("microverse_jax"):
    return Command(line, tokens[2], tuple(tokens[3:]))
  if tokens[:1] == ["microworldbench"]:
    sub = tokens[1:2] if tokens[1:2] and not tokens[1].startswith("-") else []
    return Command(line, " ".join(tokens[:1] + sub), tuple(tokens[1 + len(sub) :]))
  return None


def commands(text: str) -> list[Command]:
  """Every microverse_jax / microworldbench command line of a page's shell code blocks."""
  found = []
  for number, line in shell_lines(text):
    for tokens in _segments(_without_placeholders(shlex.split(line, comments=True))):
      command = _command(number, tokens)
      if command is not None:
        found.append(command)
  return found


# ---------------------------------------------------------------------------- what each command defines
def _argparse_spellings(parser: argparse.ArgumentParser) -> tuple[set[str], dict[str, str]]:
  """An action's first option string is its spelling; the others are old ones."""
  canonical, aliases = set(), {}
  for action in parser._actions:
    if action.option_strings:
      canonical.add(action.option_strings[0])
      aliases |= {old: action.option_strings[0] for old in action.option_strings[1:]}
  return canonical, aliases


def _parser_of_main(main) -> argparse.ArgumentParser:
  """The parser a main() builds for itself, caught as it parses (for a CLI with no parser())."""

  class Built(Exception):
    pass

  def stop(parser, *args, **kwargs):
    raise Built(parser)

  with mock.patch.object(argparse.ArgumentParser, "parse_args", stop):
    try:
      main([])
    except Built as e:
      return e.args[0]
  raise AssertionError(f"{main.__module__}.main parsed no command line")


def _is_main_block(node: ast.stmt) -> bool:
  return isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"


@functools.cache
def _absl_spellings(module: str) -> tuple[set[str], dict[str, str]]:
  """The flags of define_flags() and the `__main__` block: DEFINE_alias names an old spelling."""
  tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
  scopes = [n for n in tree.body if _is_main_block(n) or getattr(n, "name", None) == "define_flags"]
  canonical, aliases = set(), {}
  for call in (c for scope in scopes for c in ast.walk(scope) if isinstance(c, ast.Call)):
    f = call.func
    if not (
      isinstance(f, ast.Attribute)
      and f.attr.startswith("DEFINE_")
      and getattr(f.value, "id", None) in ("flags", "config_flags")
    ):
      continue
    names = [f"--{a.value}" for a in call.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if f.attr == "DEFINE_alias":
      aliases[names[0]] = names[1]
    else:
      canonical.add(names[0])
      if f.attr in ("DEFINE_bool", "DEFINE_boolean"):
        canonical.add(f"--no{names[0][2:]}")
  return canonical, aliases


def _value(args: tuple[str, ...], flag: str) -> str | None:
  """The value of `flag=VALUE` or `flag VALUE` on a command line."""
  for i, arg in enumerate(args):
    if arg.startswith(f"{flag}="):
      return arg.split("=", 1)[1]
    if arg == flag and i + 1 < len(args):
      return args[i + 1]
  return None


def spellings(command: Command) -> tuple[set[str], dict[str, str]]:
  """(the command's flags, {old spelling: its flag}); ValueError if it is no known command line."""
  if command.program.startswith("microworldbench"):
    from microworldbench.cli import build_parser

    parser, sub = build_parser(), command.program.partition(" ")[2]
    if sub:
      parser = parser._subparsers._group_actions[0].choices.get(sub)
    if parser is None:
      raise ValueError("no such command")
    return _argparse_spellings(parser)
  try:
    found = importlib.util.find_spec(command.program)
  except ModuleNotFoundError:
    found = None
  if found is None:
    raise ValueError("no such module")
  if command.program in ABSL:
    return _absl_spellings(command.program)
  module = importlib.import_module(command.program)
  if command.program == "microverse_jax.launch.sweep":
    return _argparse_spellings(module.parser(_value(command.args, "--launcher") or "local"))
  if hasattr(module, "parser"):
    return _argparse_spellings(module.parser())
  if hasattr(module, "main"):
    return _argparse_spellings(_parser_of_main(module.main))
  raise ValueError("not a command line (no parser() or main())")


# ---------------------------------------------------------------------------- configs
@functools.cache
def load_config(spec: str) -> ml_collections.ConfigDict:
  """configs/FILE.py[:arg], as the CLIs load it: FILE relative to the repo root, get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not (ROOT / path).is_file():
    raise FileNotFoundError(f"no file {path} in the repository")
  module_spec = importlib.util.spec_from_file_location(f"docs_config_{pathlib.Path(path).stem}", ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def config_problems(command: Command) -> list[str]:
  """--config=FILE[:arg] loads and every --config.KEY=VALUE names a key of it."""
  spec = _value(command.args, "--config")
  if spec is None or "..." in spec or "$" in spec:
    return []
  try:
    config = load_config(spec)
  except Exception as e:  # noqa: BLE001 (any failure of the config file is the finding)
    return [f"--config={spec}: does not load: {type(e).__name__}: {e}"]
  keys = [a.split("=", 1)[0][len("--config.") :] for a in command.args if a.startswith("--config.")]
  return [f"--config.{key}: no such key in {spec}" for key in keys if not _has_key(config, key)]


def problems(command: Command) -> list[str]:
  """What would stop the command line as written: each a `flag: why`."""
  try:
    canonical, aliases = spellings(command)
  except ValueError as e:
    return [f"{command.program}: {e}"]
  found = []
  for flag in (a.split("=", 1)[0] for a in command.args if a.startswith("--")):
    if (flag.startswith("--config.") and "--config" in canonical) or flag in canonical | ANYWHERE:
      continue
    if flag in aliases:
      found.append(f"{flag}: deprecated spelling of {aliases[flag]} ({command.program})")
    else:
      found.append(f"{flag}: not a flag of {command.program}")
  return found + (config_problems(command) if "--config" in canonical else [])


# ---------------------------------------------------------------------------- tests
def test_the_scanner_joins_lines_and_drops_env_chains_comments_and_placeholders():
  text = (
    "text `python -m microverse_jax.train --dst`\n"
    "```bash\n"
    "JAX_PLATFORMS=cpu python -m microverse_jax.aot --config=c.py \\\n"
    "    --topology=v5p-8 [--dcn_axis=fsdp] [--config.key=value ...]  # a note\n"
    "cd x && microworldbench physics --videos v ... --out o | tee log; python -m pytest -q\n"
    "```\n"
    "```python\n"
    "python -m microverse_jax.train --bad\n"
    "```\n"
  )
  assert commands(text) == [
    Command(3, "microverse_jax.aot", ("--config=c.py", "--topology=v5p-8")),
    Command(5, "microworldbench physics", ("--videos", "v", "--out", "o")),
  ]


def test_the_checks_name_aliases_unknown_flags_and_bad_config_keys():
  line = "python -m microverse_jax.export --config=configs/wan2_1.py:1.3b --dst=o --format=lora --config.eval.nope=1"
  assert problems(commands(f"```\n{line}\n```")[0]) == [
    "--dst: deprecated spelling of --out (microverse_jax.export)",
    "--config.eval.nope: no such key in configs/wan2_1.py:1.3b",
  ]
  assert problems(Command(1, "microworldbench evaluate", ("--judge-url", "u", "--bogus"))) == [
    "--judge-url: deprecated spelling of --judge_url (microworldbench evaluate)",
    "--bogus: not a flag of microworldbench evaluate",
  ]
  assert problems(Command(1, "microverse_jax.nope", ())) == ["microverse_jax.nope: no such module"]
  assert problems(Command(1, "microverse_jax.train", ("--config=configs/none.py",)))[0].startswith(
    "--config=configs/none.py: does not load: FileNotFoundError"
  )


def test_every_documented_command_line_runs_as_written():
  found = [(page, command) for page in PAGES for command in commands(page.read_text())]
  assert set(ABSL) <= {command.program for _, command in found}  # the scanner reads the pages
  bad = [f"{page.relative_to(ROOT)}:{c.line}: {problem}" for page, c in found for problem in problems(c)]
  assert not bad, f"{len(bad)} problems in the docs' command lines:\n" + "\n".join(bad)
