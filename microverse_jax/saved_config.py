"""A workdir's saved config as an ml_collections config file, so CLIs that read a workdir need no
--config: `--config=<this file>:WORKDIR` (what `cli.with_saved_config` inserts), overrides apply."""

import json

import ml_collections
from etils import epath

from microverse_jax import files


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, after checking WORKDIR is a training run (`files.require_kind`).

  Errors are OSErrors: config_flags hands those to the command, which prints one line; it buries a
  ValueError in a traceback (and cannot rebuild a JSONDecodeError at all)."""
  try:
    files.require_kind(workdir, ("run",), "--workdir")
  except ValueError as e:
    raise OSError(str(e)) from None
  path = epath.Path(workdir).expanduser() / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no saved config (give --config, or a workdir that a training run wrote)")
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise OSError(f"{path}: not a saved config, the JSON is cut short or broken ({e})") from None
  if not isinstance(saved, dict):
    raise OSError(f"{path}: not a saved config (a JSON {type(saved).__name__}, not an object)")
  return ml_collections.ConfigDict(saved)
