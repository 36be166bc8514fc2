"""Helpers of the trainer tests: the tiny config with dotted overrides, and a workdir's losses."""

import json
import os

from microverse_jax.configs import microsim_tiny


def tiny_config(data_dir, **overrides):
  c = microsim_tiny.get_config("test")
  c.data.data_dir = data_dir
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}
