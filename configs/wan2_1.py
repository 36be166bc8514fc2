"""Wan2.1 text-to-video fine-tuning on MicroSim-10K: the MicroVerse recipe, at scale.

  --config=configs/wan2_1.py:1.3b,lora          (the paper's LoRA run: rank 32, lr 1e-4)
  --config=configs/wan2_1.py:14b,full,720p      (full fine-tune, lr 1e-5, gradient checkpointing)
  --config=configs/wan2_1.py:1.3b,lora,official (the official scripts exactly: batch 2, bf16 weights, ...)
  --config=configs/wan2_1.py:14b,lora,runlocal  (any variant shrunk for a CPU smoke run)

arg: comma-separated variants: size 1.3b | 14b; mode lora | full; resolution 480p | 720p; official;
runlocal. Training reads the latent cache (python -m microverse_jax.encode), the fast path at scale;
runlocal trains on raw procedural clips through a tiny random Wan-VAE and umT5 instead.
docs/recipe.md lists every difference between `official` and the default, with its reason.
"""

import dataclasses

import ml_collections

from microverse_jax.configs import base
from microverse_jax.models.wan_dit import WanDiTConfig

VARIANTS = {"1.3b", "14b", "lora", "full", "480p", "720p", "official", "runlocal"}
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
OFFICIAL_BATCH = 2  # the official runs: 2 GPUs x 1 clip (accelerate_2gpu.yaml, DataLoader batch 1)


def get_config(arg: str = "1.3b,lora") -> ml_collections.ConfigDict:
  variants = base.variants(arg, VARIANTS, "configs/wan2_1.py")
  size = "14B" if "14b" in variants else "1.3B"
  lora = "full" not in variants
  official = "official" in variants
  height, width = RESOLUTIONS["720p" if "720p" in variants else "480p"]

  c = base.get_config()
  c.init_from = ""  # python -m microverse_jax.convert dit --src <Wan2.1-T2V-*-Diffusers/transformer> --out DIR
  c.model.update(dataclasses.asdict(WanDiTConfig.preset(size)))
  c.model.update(dtype="bfloat16", remat_policy="nothing_saveable", lora_rank=32 if lora else 0)
  c.data.update(
    data_dir="gs://YOUR_BUCKET/tensorflow_datasets",
    batch_size=OFFICIAL_BATCH if official else 8,
    height=height,
    width=width,
    dataset_repeat=100 if lora else 1,
  )  # official: LoRA repeats the data 100x per epoch, full 1x
  # optim.lr is the official rate at the official batch (reference_batch); data.batch_size scales it by
  # lr_scaling ("sqrt": lr * sqrt(B / 2), the Adam rule; "linear"; "none"). The official runs keep
  # bf16 weights and AdamW moments (param_dtype); the default keeps fp32 master weights.
  c.optim.update(
    lr=1e-4 if lora else 1e-5,
    lr_scaling="sqrt",
    reference_batch=OFFICIAL_BATCH,
    param_dtype="bfloat16" if official else "float32",
  )
  # num_steps=0: computed at start from the train split (the held-out 5% excluded), as the official
  # schedule: num_epochs x ceil(train clips x dataset_repeat / batch). LoRA 5 epochs, full 2.
  c.train.update(num_epochs=5 if lora else 2)
  # same_noise: every prompt gets the noise of seed 42's first draw, as the official inference.py
  # (one seed per call); the default gives prompt i its own noise (fold_in(seed, i)).
  c.sample.same_noise = official
  prompt = "A red blood cell squeezes through a narrow capillary, deforming and recovering its shape."
  c.evals.samples.prompts = (prompt,)

  if "runlocal" in variants:  # same structure, CPU sizes: random tiny VAE / umT5, procedural clips
    c.model.update(
      num_heads=2,
      head_dim=16,
      ffn_dim=64,
      num_layers=2,
      text_dim=32,
      freq_dim=32,
      rope_max_seq_len=32,
      in_channels=4,
      out_channels=4,
      dtype="float32",
      remat_policy="none",
      lora_rank=4 if lora else 0,
      lora_alpha=4.0,
    )
    c.autoencoder.preset = "tiny"
    c.text.update(preset="tiny", tokenizer="bytes", max_length=64)
    c.data.update(
      name="microsim_synth",
      data_dir="~/tensorflow_datasets",
      source="video",
      batch_size=2,
      num_frames=9,
      height=32,
      width=32,
      worker_count=0,
    )
    c.train.update(num_steps=3, log_every=1, checkpoint_every=3)
    c.optim.update(lr_scaling="none", param_dtype="float32")
    c.sample.steps = 4
    c.evals.loss.every = 0
    c.mesh.update(data=-1, fsdp=1)
  return c


def sweep(arg: str = "1.3b,lora") -> list[dict]:
  """Learning rate x LoRA rank (LoRA) or learning rate alone (full): a list of config overrides."""
  if "full" in arg:
    return [{"optim.lr": lr} for lr in (5e-6, 1e-5, 2e-5)]
  return [
    {"optim.lr": lr, "model.lora_rank": r, "model.lora_alpha": float(r)}
    for lr in (5e-5, 1e-4, 2e-4)
    for r in (16, 32, 64)
  ]
