"""The package's shape: imports point down only (no loops), no generic top-level names installed,
and the trainer stays short."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folders installed under the project's namespace (setup.cfg package_dir).
PACKAGES = {
  "microverse_jax": "microverse_jax",
  "microverse_jax.configs": "configs",
  "microverse_jax.datasets": "data",
  "microverse_jax.launch": "launch",
}


def module_files(repo: str) -> dict[str, str]:
  """Dotted module name -> file, for the library and the folders installed beside it."""
  out = {}
  for package, folder in PACKAGES.items():
    root = os.path.join(repo, folder)
    for dirpath, _, names in os.walk(root):
      for name in names:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, name), root)[:-3].replace(os.sep, ".")
          rel = rel[: -len(".__init__")] if rel.endswith("__init__") else rel
          out[package if rel == "__init__" else f"{package}.{rel}"] = os.path.join(dirpath, name)
  return out


def imported_names(path: str) -> set[str]:
  """Every dotted name a file imports anywhere in its body (function-level imports too)."""
  names = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
  return names


def import_graph(repo: str) -> dict[str, set[str]]:
  """Module -> the project modules it imports anywhere in its body (function-level imports too)."""
  files = module_files(repo)
  return {
    module: {n for n in imported_names(path) if n in files and n != module and not module.startswith(n + ".")}
    for module, path in files.items()
  }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  found, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        found.append(stack[stack.index(dep) :] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return found


def test_no_import_loops():
  assert cycles(import_graph(REPO)) == []


def test_the_checker_sees_a_loop():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_library_and_aot_never_import_a_command_line_tool():
  graph = import_graph(REPO)
  clis = {f"microverse_jax.{m}" for m in ("train", "sample", "encode", "aot", "export", "fit")}
  library = (
    "plans",
    "encoders",
    "train_state",
    "batches",
    "evaluators",
    "pipeline",
    "train_step",
    "latent_cache",
    "input_pipeline",
    "aot",
  )
  for module in (f"microverse_jax.{m}" for m in library):
    assert not graph[module] & clis, (module, graph[module] & clis)


def test_nothing_installs_generic_top_level_names():
  import configparser

  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  packages = cfg["options"]["packages"].split()
  assert packages and all(p == "microverse_jax" or p.startswith("microverse_jax.") for p in packages)
  for package, folder in PACKAGES.items():
    if package != "microverse_jax":
      assert f"{package} = {folder}" in cfg["options"]["package_dir"]


def test_the_trainer_stays_short():
  lines = open(os.path.join(REPO, "microverse_jax", "train.py"), encoding="utf-8").read().count("\n")
  assert lines <= 380, lines


def test_the_tree_is_formatted_and_lint_clean():
  """pyproject.toml's [tool.ruff]: `ruff format` and `ruff check` leave nothing to change."""
  import subprocess
  import sys

  for args in (["format", "--check", "."], ["check", "."]):
    run = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


# The core library never reaches up into recipes, datasets or the benchmark; the loaders and evaluators reach
# datasets only by name (evaluators/physics.py, encoders.OFFLINE_TOKENIZERS); the pipeline never imports a recipe.
UPWARD = ("microverse_jax.configs", "microverse_jax.datasets", "microworldbench", "bench")
CORE = ("models", "kernels", "diffusion", "sharding", "input_pipeline", "train", "train_step", "latent_cache")
NEVER = {
  **{f"microverse_jax.{m}": UPWARD for m in CORE},
  **{
    f"microverse_jax.{m}": UPWARD + ("microverse_jax.build_dataset",)
    for m in ("plans", "encoders", "train_state", "batches", "pipeline", "aot", "fit")
  },
  **{f"microverse_jax.evaluators.{m}": UPWARD for m in ("__init__", "loss", "samples")},
}


def reaches_up(repo: str) -> list[tuple[str, str]]:
  found = []
  for module, path in module_files(repo).items():
    rule = next(
      (v for k, v in NEVER.items() if module == k.removesuffix(".__init__") or module.startswith(k + ".")), ()
    )
    found += [(module, n) for n in sorted(imported_names(path)) if any(n == u or n.startswith(u + ".") for u in rule)]
  return found


def test_the_core_library_never_imports_recipes_datasets_or_the_benchmark():
  assert reaches_up(REPO) == []


def test_the_never_imports_checker_sees_an_import_inside_a_function(tmp_path):
  lib = tmp_path / "microverse_jax"
  lib.mkdir()
  (lib / "diffusion.py").write_text("def f():\n  from microverse_jax.configs import base\n")
  assert [m for m, _ in reaches_up(str(tmp_path))] == ["microverse_jax.diffusion"] * 2  # configs, configs.base


def test_the_library_never_asks_whether_a_config_key_exists():
  """configs/base.py names every key: no `"key" in c.section`, no `c.section.get("key", default)`."""
  import re

  asks = re.compile(r"""["'][\w.]+["'] (not )?in (c|config|self\.config|self\.c)\b|\b(c|config)(\.\w+)+\.get\(""")
  found = []
  for path in module_files(REPO).values():
    if os.sep + "microverse_jax" + os.sep in path or path.startswith(os.path.join(REPO, "microverse_jax")):
      found += [f"{path}:{i}" for i, line in enumerate(open(path, encoding="utf-8"), 1) if asks.search(line)]
  assert found == []
