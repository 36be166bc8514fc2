r"""Sweeps: a config's `sweep(arg) -> list[dict]` of dotted-key overrides, expanded into runs with
distinct, readable workdirs, and launched (locally one after another, on a TPU VM, or on XPK).

  python -m microverse_jax.launch.sweep --config=configs/wan2_1.py:1.3b,lora --workdir_root=gs://BUCKET/sweeps/lora \
      --dry_run
  python -m microverse_jax.launch.sweep --config=configs/microsim_tiny.py:test --workdir_root=/tmp/sweep  # locally
  python -m microverse_jax.launch.sweep --config=... --workdir_root=gs://... --launcher=tpu --name=mv --zone=Z \
      --accelerator_type=v5p-64 [--only=0,3-5]      # one slice, runs in sequence
  python -m microverse_jax.launch.sweep --config=... --workdir_root=gs://... --launcher=xpk --cluster=C \
      --accelerator_type=v5p-64 --workload=mv-lr     # one workload per run: mv-lr-00, mv-lr-01, ...

Run k of the sweep lands in WORKDIR_ROOT/<kk>_<key>=<value>_..., e.g. 03_lr=0.0001_lora_rank=16_lora_alpha=16
(the last component of each dotted key; the full key where two would read alike). Every override is
checked against the config (the key exists, the type fits) before anything is launched, and
WORKDIR_ROOT/sweep.json lists the runs. Extra --config.KEY=VALUE flags apply to every run. On a TPU
slice or XPK, each run's config (with its overrides) is also validated against the slice before the
first cloud call (launch/preflight.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
from typing import Any, Sequence

from etils import epath

from microverse_jax import files
from microverse_jax.launch import local, preflight, shell, tpu, xpk


@dataclasses.dataclass(frozen=True)
class SweepRun:
  index: int
  name: str  # the workdir's last component
  workdir: str
  overrides: dict[str, Any]  # dotted config key -> value

  def flags(self) -> list[str]:
    return shell.override_flags(self.overrides)


def load_config_module(path: str):
  """Imports configs/FILE.py by path (configs import the library, so run from the repo root)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={path}: no such config file")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:.6g}"
  if isinstance(value, (list, tuple)):
    return "-".join(_format_value(v) for v in value)
  return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "empty"


def run_name(index: int, overrides: dict[str, Any], width: int = 2) -> str:
  """03_lr=0.0001_lora_rank=16: index, then short key=value pairs (full keys where short ones clash)."""
  short = [k.rsplit(".", 1)[-1] for k in overrides]
  keys = [k if short.count(s) > 1 else s for k, s in zip(overrides, short)]
  parts = [f"{k}={_format_value(v)}" for k, v in zip(keys, overrides.values())]
  return "_".join([f"{index:0{width}d}", *parts])


def _apply(config, key: str, value: Any, where: str) -> None:
  """Sets dotted `key` on a ConfigDict, checking that it exists and that the type fits."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise ValueError(f"{where}: no config key {'.'.join(parts[: i + 1])!r} (in override {key!r})")
    node = node[part]
  if not hasattr(node, "keys") or parts[-1] not in node:
    raise ValueError(f"{where}: no config key {key!r}")
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {key}={value!r} does not fit the config ({e})") from None


def expand(config_spec: str, workdir_root: str) -> list[SweepRun]:
  """configs/FILE.py:arg -> the runs of FILE's sweep(arg), each checked against get_config(arg)."""
  path, _, arg = config_spec.partition(":")
  module = load_config_module(path)
  if not callable(getattr(module, "sweep", None)):
    raise ValueError(f"{path} defines no sweep(arg) function; a sweep lives beside its config")
  overrides_list = module.sweep(arg) if arg else module.sweep()
  if not isinstance(overrides_list, (list, tuple)) or not overrides_list:
    raise ValueError(f"{path}: sweep({arg!r}) returned {overrides_list!r}; expected a non-empty list of dicts")
  width = max(2, len(str(len(overrides_list) - 1)))
  runs = []
  for index, overrides in enumerate(overrides_list):
    where = f"{path}: sweep({arg!r})[{index}]"
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
      raise ValueError(f"{where} is {overrides!r}; expected a dict of dotted config keys")
    config = module.get_config(arg) if arg else module.get_config()
    for key, value in overrides.items():
      _apply(config, key, value, where)
    name = run_name(index, overrides, width)
    runs.append(SweepRun(index, name, str(epath.Path(workdir_root) / name), dict(overrides)))
  for i, run in enumerate(runs):  # names carry the index: identical overrides are the real repeat
    twin = next((r for r in runs[:i] if r.overrides == run.overrides), None)
    if twin is not None:
      raise ValueError(f"{path}: sweep({arg!r}) gives repeated runs {twin.index} and {run.index}: {run.overrides}")
  return runs


def select(runs: list[SweepRun], only: str | None) -> list[SweepRun]:
  """--only=0,3-5 keeps those run indices."""
  if not only:
    return runs
  keep: set[int] = set()
  for part in only.split(","):
    lo, _, hi = part.partition("-")
    try:
      keep.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
      raise ValueError(f"--only={only!r}: expected indices and ranges like 0,3-5") from None
  missing = sorted(keep - {r.index for r in runs})
  if missing:
    raise ValueError(f"--only={only!r}: the sweep has runs 0..{len(runs) - 1}, not {missing}")
  return [r for r in runs if r.index in keep]


def write_manifest(workdir_root: str, config_spec: str, runs: Sequence[SweepRun]) -> epath.Path:
  """WORKDIR_ROOT/sweep.json: the config and every run's workdir and overrides (written atomically,
  replacing the manifest of an earlier launch)."""
  final = epath.Path(workdir_root) / "sweep.json"
  files.write_text(final, json.dumps({"config": config_spec, "runs": [dataclasses.asdict(r) for r in runs]}, indent=1))
  return final


def parser(launcher: str = "local") -> argparse.ArgumentParser:
  p = shell.parser(__doc__, shell.program(__spec__, "launch/sweep.py"))
  p.add_argument("--config", required=True, help="configs/FILE.py[:arg], FILE has sweep(arg)")
  p.add_argument("--workdir_root", required=True, help="local directory or gs://BUCKET/...")
  p.add_argument(
    "--launcher",
    choices=("local", "tpu", "xpk"),
    default="local",
    help="where the runs go (each launcher adds its own flags)",
  )
  p.add_argument("--only", default=None, help="run indices to launch, e.g. 0,3-5")
  if launcher == "tpu":
    tpu.add_arguments(p)
  elif launcher == "xpk":
    xpk.add_arguments(p)
  else:
    p.add_argument("--timeout", type=float, default=None, help="seconds per local run")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  pre.add_argument("--launcher", choices=("local", "tpu", "xpk"), default="local")
  launcher = pre.parse_known_args(argv)[0].launcher
  args, extra = parser(launcher).parse_known_args(argv)
  common = shell.check_override_flags(extra)
  runs = select(expand(args.config, args.workdir_root), args.only)
  runner = shell.Runner(args.dry_run)

  # Preflight: everything that can fail here fails before the first cloud call.
  if launcher == "tpu":
    vm = tpu.vm_from_args(args)
    tpu.check_workdir(vm.slice, args.workdir_root)
    slice = vm.slice
  elif launcher == "xpk":
    workloads = [xpk.workload_from_args(args, name=f"{args.workload}-{r.index:02d}") for r in runs]
    tpu.check_workdir(workloads[0].slice, args.workdir_root)
    slice = workloads[0].slice
  else:
    slice = None
  for r in runs:
    preflight.check(
      args.config, r.flags() + common, slice=slice, remote=launcher != "local", where=f"run {r.index} ({r.name})"
    )
  for r in runs:
    runner.note(f"run {r.index}: {r.workdir}  {json.dumps(r.overrides)}")
  if not args.dry_run:
    runner.note(f"wrote {write_manifest(args.workdir_root, args.config, runs)}")

  if launcher == "local":
    for r in runs:
      train = shell.train_argv(args.config, r.workdir, r.flags() + common, python=sys.executable)
      local.run(train, runner, timeout=args.timeout)
  elif launcher == "tpu":
    jobs = [(r.name, tpu.train_command(args.config, r.workdir, r.flags() + common)) for r in runs]
    tpu.launch(
      vm,
      jobs,
      args.steps.split(","),
      runner,
      log_dir=args.log_dir or os.path.join("logs", vm.name),
      include_untracked=args.include_untracked,
      needed=[preflight.config_path(args.config)],
    )
  else:
    for r, workload in zip(runs, workloads):
      xpk.launch(workload, xpk.train_command(args.config, r.workdir, r.flags() + common), args.steps.split(","), runner)


if __name__ == "__main__":
  shell.cli(main)
