"""The CPU default: a tiny pixel-space DiT on the offline procedural micro-world dataset.

  python -m microverse_jax.train --config=configs/microsim_tiny.py --workdir=workdir/tiny

Trains in about ten minutes on 2 CPU cores. `arg`, a comma list:
  long  the physics curve of issue 26 (BENCHMARKS.md): SNR+1 weighting, EMA 0.999 and 8x the steps (19200,
        about 70 minutes alone on 2 cores), physics every 2400 steps: `--config=configs/microsim_tiny.py:long`
  test  seconds per run, for unit tests
"""

import ml_collections

from microverse_jax.configs import base
from microverse_jax.datasets.microsim_synth import processes

_DATASET = {k: processes.DEFAULTS[k] for k in ("seed", "num_frames", "size", "fps")}  # its build settings


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base.get_config()
  c.model.update(
    patch_size=(1, 8, 8),
    num_heads=4,
    head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=64,
    freq_dim=64,
    ffn_dim=512,
    num_layers=4,
    rope_max_seq_len=64,
    dtype="float32",
    remat_policy="dots_saveable",
  )
  # Frozen encoders: pixel space (identity autoencoder) and a tiny random umT5 over UTF-8 bytes.
  c.autoencoder.kind = "pixel"
  c.text.update(preset="tiny", tokenizer="bytes", max_length=160)
  c.data.update(
    name="microsim_synth", source="video", num_frames=9, height=32, width=32, worker_count=0, dataset_repeat=1
  )
  c.optim.update(lr=1e-3, warmup_steps=100, schedule="cosine", b2=0.99, grad_clip=1.0)
  # A small pixel-space model learns far faster predicting the clean clip than the velocity (the
  # noise never passes through it); the loss is still the velocity loss of the recipe.
  c.diffusion.update(shift=1.0, prediction="x0")
  c.train.update(num_steps=2400, log_every=50, checkpoint_every=600, keep_checkpoints=2, caption_dropout=0.1)
  c.sample.update(steps=25, negative_prompt="", fps=8)
  c.evals.loss.update(every=600, num_batches=2)
  # full captions (what the dataset's captions look like) of validation clips 290, 292 and 288
  prompts = tuple(processes.clip_spec(i, **_DATASET).caption for i in (290, 292, 288))
  c.evals.samples.update(every=2400, prompts=prompts)
  c.evals.physics.update(every=2400, num_clips=16)
  c.mesh.update(data=-1, fsdp=1)

  variants = base.variants(arg, {"long", "test"}, "configs/microsim_tiny.py")
  if "long" in variants:  # the physics-vs-steps curve: 8x the budget, physics every 1x
    budget = c.train.num_steps
    c.diffusion.weighting = "snr+1"
    c.optim.ema_decay = 0.999
    c.train.num_steps = 8 * budget
    c.evals.loss.every = c.evals.physics.every = budget
    c.evals.samples.every = 2 * budget
  if "test" in variants:  # unit tests: seconds per run
    c.model.update(patch_size=(1, 4, 4), num_heads=2, head_dim=16, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32)
    c.text.max_length = 32
    c.data.update(batch_size=4, num_frames=5, height=16, width=16)
    c.optim.warmup_steps = 2
    c.train.update(num_steps=4, log_every=1, checkpoint_every=2)
    c.sample.steps = 4
    c.evals.loss.update(every=0, num_batches=1)
    c.evals.samples.every = 0
    c.evals.physics.every = 0
  return c
