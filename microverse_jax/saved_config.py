"""A workdir's saved config as an ml_collections config file, so CLIs that read a workdir need no
--config: `--config=<this file>:WORKDIR` (what `cli.with_saved_config` inserts), overrides apply."""

import functools
import json

import ml_collections
from etils import epath

from microverse_jax import files
from microverse_jax.configs import base as base_config

# An older run's `eval` section: its keys in today's config (`sample.*` and the `evals` entries).
EVAL_KEYS = {
  "sample_steps": ("sample", "steps"),
  **{k: ("sample", k) for k in ("guidance", "negative_prompt", "sampler", "fps", "step_cache", "cfg_cache")},
  **{k: ("sample", k) for k in ("same_noise", "tiled_decode")},  # (older runs lack these: the base's defaults)
  "every": ("evals.loss", "every"),
  "num_batches": ("evals.loss", "num_batches"),
  "buckets": ("evals.loss", "buckets"),
  "sample_every": ("evals.samples", "every"),
  "prompts": ("evals.samples", "prompts"),
  "physics": ("evals.physics", "num_clips"),
}


def base() -> ml_collections.ConfigDict:
  """configs/base.py: every key with its default."""
  return base_config.get_config()


def merged(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (a dict from config.json) over the base config, so a run saved before a key existed reads
  that key's default. An older run's `eval` section is read into `sample` and `evals` (EVAL_KEYS)."""
  saved = dict(saved)
  old = saved.pop("eval", None) or {}
  c = base()
  c.update(saved)
  for key, value in old.items():
    if key in EVAL_KEYS:
      section, field = EVAL_KEYS[key]
      functools.reduce(lambda d, part: d[part], section.split("."), c)[field] = value
  if old:  # physics ran with the samples, when there were any
    c.evals.physics.every = c.evals.samples.every if old.get("physics") else 0
  return c


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json over the base config (`merged`), after checking WORKDIR is a training run.

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
  return merged(saved)
