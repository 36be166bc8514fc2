"""Preflight: what every launcher checks here, before its first gcloud or xpk call, so that a typo
costs no slice.

  1. the config file exists (and, for remote runs, is named relative to the repo root, which is where
     the workers run the trainer);
  2. the config loads and every --config.KEY=VALUE override applies, exactly as the trainer will parse
     them (ml_collections' config flags with a locked config);
  3. where the slice is known: the trainer's own `plans.resolve(config, num_devices)` (mesh vs the slice's
     devices, batch vs the data shards, model vs mesh, init_from checkpoints exist), and the global
     batch vs the slice's hosts (one process per host). Multislice (num_slices > 1): the mesh over
     slices x devices, its dcn_* keys against the slice count, the batch over every slice's hosts;
  4. with --fit (one slice): the training step compiled ahead of time for the slice here (microverse_jax/fit.py,
     cached) fits its HBM; if not, the error names the --config. overrides (remat policy, mesh, batch) that do.

Every failure is a PreflightError with one line naming the file, the key or the value at fault.
"""

from __future__ import annotations

import argparse
import difflib
import os
from typing import Sequence

from microverse_jax.launch import topologies


class PreflightError(ValueError):
  """A launch stopped before any cloud call; the message names what to fix."""


def config_path(spec: str) -> str:
  return spec.partition(":")[0]


def check_config_file(spec: str, *, remote: bool) -> str:
  """The config file of --config=FILE[:arg]; remote runs need it relative to the repo root."""
  path = config_path(spec)
  if not os.path.isfile(path):
    raise PreflightError(f"--config={spec}: no such config file {path!r} (looked in {os.getcwd()})")
  if remote and (os.path.isabs(path) or os.path.normpath(path).startswith("..")):
    raise PreflightError(
      f"--config={spec}: the workers run the trainer from their copy of the repo; "
      f"launch from the repo root and name the config relative to it (configs/FILE.py)"
    )
  return os.path.normpath(path)


def _keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if hasattr(value, "items"):
      keys += _keys(value, f"{prefix}{key}.")
  return keys


def _last_line(text: str) -> str:
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  return lines[-1] if lines else str(text)


def _parse(spec: str, overrides: Sequence[str]):
  """Parses --config=spec and the overrides as the trainer does (fresh flags, its own argv)."""
  from absl import flags
  from ml_collections import config_flags

  argv = ["launcher", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def load_config(spec: str, overrides: Sequence[str] = ()):
  """The config the trainer would build from --config=spec and the --config.KEY=VALUE overrides."""
  check_config_file(spec, remote=False)
  try:
    config = _parse(spec, [])
  except Exception as e:  # the config file's own code failed (a bad arg, an import error)
    raise PreflightError(f"--config={spec}: the config does not load: {_last_line(e)}") from None
  try:
    return _parse(spec, overrides)
  except Exception as e:
    error = e
  keys = _keys(config)
  for flag in overrides:  # name the override at fault
    key = flag.partition("=")[0][len("--config.") :]
    if key not in keys:
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f"; did you mean {close[0]}?" if close else ""
      raise PreflightError(f"{flag}: {config_path(spec)} has no config key {key!r}{hint}") from None
    try:
      _parse(spec, [flag])
    except Exception as e:
      raise PreflightError(
        f"{flag}: the value does not fit {key} (now {_get(config, key)!r}): {_last_line(e)}"
      ) from None
  raise PreflightError(f"--config={spec} with {' '.join(overrides)}: {_last_line(error)}") from None


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("fit (ahead-of-time memory check, microverse_jax/fit.py)")
  g.add_argument(
    "--fit", action="store_true", help="compile the step for the slice here first; refuse a config that does not fit"
  )
  g.add_argument("--fit_hbm_fraction", type=float, default=1.0, help="the share of HBM the step may use")
  g.add_argument("--fit_cache", default="~/.cache/microverse_jax/fit.json", help="compile results cache")


def check_fit(config, accelerator_type: str, what: str, hbm_fraction: float = 1.0, cache: str | None = None) -> dict:
  """The config's step compiled for one slice (through fit's cache) fits its HBM x hbm_fraction; else a
  PreflightError naming the overrides of the first combination that fits (fit.Planner.suggest)."""
  from microverse_jax import aot, fit  # pylint: disable=g-import-not-at-top  (compiles: imports jax)

  planner = fit.Planner(config, cache or None, hbm_fraction)
  own, better = planner.suggest(accelerator_type)
  hbm = planner.hbm(aot.parse_topology(accelerator_type)) / 2**30
  if fit.fits(own, hbm * 2**30):
    return own
  if not ("total_bytes" in own or "skipped" in own or own.get("oom")):
    raise PreflightError(f"{what} on {accelerator_type}: --fit: the step does not compile: {own.get('error')}")
  need = own.get("total_bytes", own.get("argument_bytes", 0)) / 2**30
  head = f"{what} on {accelerator_type}: --fit: " + (
    f"the compiler ran out of its {hbm:.2f} GiB of HBM per device"
    if own.get("oom")
    else f"the step needs {need:.2f} GiB per device, over the {hbm:.2f} GiB of HBM"
  )
  if better is None:
    raise PreflightError(f"{head}, and no remat policy, mesh or smaller per-device batch tried fits")
  rec = better.record
  raise PreflightError(
    f"{head}; these overrides fit ({rec['total_bytes'] / 2**30:.2f} GiB, roofline {rec['roofline_s']:.3g} s per "
    f"step): {' '.join(better.combo.overrides(config.optim.grad_accum))}"
  )


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def check(
  spec: str,
  overrides: Sequence[str] = (),
  *,
  slice: topologies.TpuSlice | None = None,
  devices: int | None = None,
  hosts: int = 1,
  remote: bool = True,
  where: str = "",
  num_slices: int = 1,
  fit: argparse.Namespace | None = None,
):
  """Loads the config with its overrides and, when the devices are known (a TPU `slice` x `num_slices`,
  or `devices` over `hosts` processes), validates it against them; `fit` (the --fit flags) with a slice:
  check_fit. Returns the config; raises PreflightError."""
  check_config_file(spec, remote=remote)
  try:
    topologies.check_num_slices(num_slices)
  except ValueError as e:
    raise PreflightError(str(e)) from None
  config = load_config(spec, overrides)
  if slice is not None:
    devices, hosts = slice.devices * num_slices, slice.hosts * num_slices
  if devices is None:
    return config
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the launcher needs no accelerator of its own
  from microverse_jax import plans  # the trainer's own check  # pylint: disable=g-import-not-at-top

  what = where or f"--config={spec}"
  on = f"{slice.accelerator_type} ({devices} devices)" if slice else f"{devices} devices"
  if slice is not None and num_slices > 1:
    on = f"{num_slices} x {slice.accelerator_type} ({devices} devices)"
  try:
    plans.resolve(config, devices, num_slices if slice is not None else None)
  except (ValueError, FileNotFoundError) as e:
    raise PreflightError(f"{what} on {on}: {e}") from None
  if config.data.batch_size % hosts:
    raise PreflightError(
      f"{what} on {on}: data.batch_size={config.data.batch_size} does not split over "
      f"{hosts} hosts (one trainer process each)"
    )
  if fit is not None and fit.fit and slice is not None:
    if num_slices > 1:
      raise PreflightError(f"{what}: --fit checks one slice; compile multislice runs with python -m microverse_jax.aot")
    check_fit(config, slice.accelerator_type, what, fit.fit_hbm_fraction, fit.fit_cache)
  return config
