"""The CPU default: a tiny pixel-space DiT on the offline procedural micro-world dataset.

  python -m microverse_jax.train --config=configs/microsim_tiny.py --workdir=workdir/tiny

Trains in about ten minutes on 2 CPU cores; `arg` "test" shrinks it further for unit tests.
"""

import ml_collections

from microverse_jax.datasets.microsim_synth import processes

_DATASET = {k: processes.DEFAULTS[k] for k in ("seed", "num_frames", "size", "fps")}  # its build settings


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.init_from = ""  # a converted DiT checkpoint (python -m microverse_jax.convert dit ...)

  c.model = ml_collections.ConfigDict(
    dict(
      patch_size=(1, 8, 8),
      num_heads=4,
      head_dim=32,
      in_channels=3,
      out_channels=3,
      text_dim=64,
      freq_dim=64,
      ffn_dim=512,
      num_layers=4,
      eps=1e-6,
      rope_max_seq_len=64,
      qk_norm="rms_norm_across_heads",
      cross_attn_norm=True,
      dtype="float32",
      attention_impl="auto",
      remat_policy="dots_saveable",
      lora_rank=0,
      lora_alpha=32.0,
      lora_targets=("q", "k", "v", "o", "ffn_in", "ffn_out"),
    )
  )
  # Frozen encoders: pixel space (identity autoencoder) and a tiny random umT5 over UTF-8 bytes.
  c.autoencoder = ml_collections.ConfigDict(dict(kind="pixel", init_from=""))
  c.text = ml_collections.ConfigDict(dict(preset="tiny", tokenizer="bytes", max_length=160, init_from=""))

  c.data = ml_collections.ConfigDict(
    dict(
      name="microsim_synth",
      data_dir="~/tensorflow_datasets",
      source="video",
      batch_size=8,
      num_frames=9,
      height=32,
      width=32,
      frame_stride=1,
      worker_count=0,
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-3,
      warmup_steps=100,
      schedule="cosine",
      weight_decay=0.01,
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      grad_clip=1.0,
      grad_accum=1,
      ema_decay=0.0,
    )
  )
  # A small pixel-space model learns far faster predicting the clean clip than the velocity (the
  # noise never passes through it); the loss is still the velocity loss of the recipe.
  # image_conditioning: how the model takes a first frame: "none" (text-to-video), "ti2v", "concat" (docs/sampling.md)
  c.diffusion = ml_collections.ConfigDict(dict(shift=1.0, prediction="x0", weighting="wan", image_conditioning="none"))

  c.train = ml_collections.ConfigDict(
    dict(
      num_steps=2400,
      log_every=50,
      checkpoint_every=600,
      keep_checkpoints=2,
      seed=0,
      profile_start=-1,
      profile_steps=3,
      caption_dropout=0.1,
      on_nonfinite="stop",
    )
  )
  c.eval = ml_collections.ConfigDict(
    dict(
      every=600,
      num_batches=2,
      buckets=(100, 300, 500, 700, 900),
      sample_every=2400,
      sample_steps=25,
      guidance=5.0,
      negative_prompt="",
      sampler="euler",
      fps=8,
      step_cache=0.0,
      cfg_cache=False,  # sampling caches, off (docs/sampling.md)
      physics=16,
      # full captions (what the dataset's captions look like) of validation clips 290, 292 and 288
      prompts=tuple(processes.clip_spec(i, **_DATASET).caption for i in (290, 292, 288)),
    )
  )
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
  c.sharding_rules = ml_collections.ConfigDict()  # logical axis -> mesh axes overrides

  if "test" in arg.split(","):  # unit tests: seconds per run
    c.model.update(patch_size=(1, 4, 4), num_heads=2, head_dim=16, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32)
    c.text.max_length = 32
    c.data.update(batch_size=4, num_frames=5, height=16, width=16)
    c.optim.warmup_steps = 2
    c.train.update(num_steps=4, log_every=1, checkpoint_every=2)
    c.eval.update(every=0, num_batches=1, sample_every=0, sample_steps=4, physics=0)
  return c
