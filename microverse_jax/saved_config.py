"""A workdir's saved config as an ml_collections config file, so CLIs that read a workdir need no
--config: `--config=<this file>:WORKDIR` (what `cli.with_saved_config` inserts), overrides apply."""

import json

import ml_collections
from etils import epath


def get_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir).expanduser() / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no saved config (give --config, or a workdir that a training run wrote)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
