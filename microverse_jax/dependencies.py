"""A module that is not installed, said in one line: the pip package and the extra that brings it.

The project's declared requirements (its installed metadata, the same lines as setup.cfg and
bench/pyproject.toml) are the one source: `missing_module_line` looks the module up there, so a new
extra needs no table here. Only modules imported under another name than their pip package's are
listed below. Imports nothing but the standard library: it runs when a dependency is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import traceback

PROJECTS = {"microverse-jax": ".", "microworldbench": "./bench"}  # whose requirements say where a package is from
IMPORT_NAMES = {  # import name -> pip package, where they differ
  "PIL": "pillow",
  "yaml": "PyYAML",
  "google.cloud.storage": "google-cloud-storage",
  "google.protobuf": "protobuf",
  "absl": "absl-py",
  "orbax": "orbax-checkpoint",
}


def _normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _package(module: str) -> str:
  """The pip package of an import name ('PIL.Image' -> 'pillow')."""
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in IMPORT_NAMES:
      return IMPORT_NAMES[".".join(parts[:n])]
  return parts[0]


def declared(package: str) -> list[tuple[str, str | None]]:
  """(project, extra or None for a core dependency) for each project that declares `package`."""
  found = []
  for project in PROJECTS:
    try:
      requires = importlib.metadata.requires(project) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for line in requires:
      name = re.match(r"[A-Za-z0-9._-]+", line)
      if name and _normal(name.group(0)) == _normal(package):
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", line)
        found.append((project, extra.group(1) if extra else None))
  return found


def missing_module_line(error: ImportError) -> str:
  """'missing module X: pip package P, from ...': where the package comes from and how to install it."""
  module = error.name or ""
  if not module:  # e.g. a compiled extension that failed to load
    return f"import failed: {' '.join(str(error).split())} (a broken install? reinstall the package named)"
  package = _package(module)
  missing = isinstance(error, ModuleNotFoundError)
  head = f"missing module {module!r}" if missing else f"cannot import from {module!r}: {error}"
  where = declared(package)
  core = [p for p, extra in where if extra is None]
  if core:
    return f"{head}: pip package {package!r}, a dependency of {core[0]}: pip install -e {PROJECTS[core[0]]}"
  if where:
    extras = " or ".join(sorted({f"{p}[{extra}]" for p, extra in where}))
    project, extra = min(where, key=lambda w: w[1] == "test")  # a runtime extra before the test one
    return f"{head}: pip package {package!r}, from the extra {extras}: pip install -e '{PROJECTS[project]}[{extra}]'"
  return f"{head}: pip package {package!r}, not declared by {' or '.join(PROJECTS)}: pip install {package}"


def exit_on_missing(error: ImportError, verbose: bool) -> None:
  """Prints the one line (the traceback first when `verbose`) and exits with status 2."""
  if verbose:
    traceback.print_exception(error)
  print(f"error: {missing_module_line(error)}", file=sys.stderr, flush=True)
  sys.exit(2)


def install_excepthook() -> None:
  """For `python -m microverse_jax.X`: an ImportError while the command's modules are imported (before
  its own error boundary runs) is the same one line and exit status 2."""
  previous = sys.excepthook

  def hook(kind, error, tb):
    if not isinstance(error, ImportError):
      return previous(kind, error, tb)
    if "--verbose" in sys.argv:
      previous(kind, error, tb)
    print(f"error: {missing_module_line(error)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)  # an exception hook cannot set the exit status otherwise

  sys.excepthook = hook
