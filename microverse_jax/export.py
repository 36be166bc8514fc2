"""Exports a training run's DiT (EMA weights when present) with LoRA merged into the base kernels.

  python -m microverse_jax.export --config=configs/FILE.py[:arg] --workdir=DIR --dst=DIR

The result is a converted checkpoint like `python -m microverse_jax.convert dit` writes: train from it
with `--config.init_from=DIR` (and model.lora_rank=0), or sample it with `sample --checkpoint=DIR`.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from microverse_jax import convert, sample
from microverse_jax.models.lora import merge_lora


def export(c, workdir: str, dst: str):
  """Loads the latest checkpoint of `workdir`, merges LoRA, writes `dst`; returns the merged model."""
  merged = merge_lora(sample.load_model(c, workdir, None))
  convert.save_params(merged, dst, "dit")
  return merged


def main(argv):
  del argv
  export(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.dst)
  print(f"wrote {flags.FLAGS.dst}", flush=True)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "The run's training config.")
  flags.DEFINE_string("workdir", None, "The training workdir (latest checkpoint).", required=True)
  flags.DEFINE_string("dst", None, "Output directory.", required=True)
  app.run(main)
