"""Tiny random Wan pipelines in the real PyTorch formats, made offline for end-to-end tests.

`save_wan_pipeline(root)` writes what a user downloads from the Hub, at toy sizes: a diffusers
`WanPipeline` folder with transformer/ (WanTransformer3DModel), vae/ (AutoencoderKLWan),
text_encoder/ (transformers UMT5EncoderModel), tokenizer/ (a sentencepiece unigram model trained
here on a few hundred generated sentences, saved as T5 tokenizer files) and scheduler/.
Sizes match `configs/wan2_1.py:...,runlocal`: DiT 2 layers x 2 heads x 16, text_dim 32, 4 latent
channels; VAE 2x temporal, 4x spatial; umT5 2 layers, d_model 32.

The Wan2.2 folders, same DiT, umT5 and tokenizer: `save_wan22_ti2v_pipeline` (Wan2.2-TI2V-5B-Diffusers:
`WanPipeline(expand_timesteps=True)` with the Wan2.2 VAE's structure, 16x spatial, 4x temporal) and
`save_wan22_a14b_pipeline` (Wan2.2-T2V-A14B-Diffusers: transformer/ and transformer_2/, boundary_ratio 0.875,
the Wan2.1 VAE).
"""

from __future__ import annotations

import itertools
import os

PIECES = 80  # sentencepiece vocabulary (a few hundred sentences allow at most ~94)
VOCAB = 128  # rows of the umT5 embedding table (>= PIECES, as umT5-XXL has spare rows)
TEXT_DIM = 32

_SUBJECTS = [
  "a red blood cell",
  "the virus",
  "a neuron",
  "the mitochondrion",
  "a bacterium",
  "the nucleus",
  "an axon",
  "the platelet",
  "a macrophage",
  "the cell membrane",
  "a protein",
  "the blood vessel",
]
_VERBS = [
  "divides into two",
  "flows along the vessel",
  "enters the cell",
  "squeezes through a capillary",
  "releases vesicles",
  "fuses with the membrane",
  "moves under the microscope",
  "glows in red light",
  "swells and bursts",
  "binds to the receptor",
]
_TAILS = [
  "slowly.",
  "in a dark field.",
  "with translucent texture.",
  "as fibres tighten.",
  "under the microscope, clearly visible.",
  "while the flow halts.",
]


def sentences() -> list[str]:
  """A few hundred short English sentences about microscopic processes (the tokenizer's corpus)."""
  return [f"{s} {v} {t}".capitalize() for s, v, t in itertools.product(_SUBJECTS, _VERBS, _TAILS)]


def train_tokenizer(out_dir: str) -> str:
  """A sentencepiece unigram model (T5 ids: pad 0, eos 1, unk 2) trained on `sentences()`, saved as
  the umT5 tokenizer files are: OUT_DIR/tokenizer/ with spiece.model, tokenizer.json (transformers'
  T5Tokenizer) and tokenizer_config.json. Returns that directory."""
  import shutil

  import sentencepiece as spm
  import transformers

  tok_dir = os.path.join(out_dir, "tokenizer")
  os.makedirs(tok_dir, exist_ok=True)
  corpus = os.path.join(out_dir, "tokenizer_corpus.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    f.write("\n".join(sentences()) + "\n")
  spm.SentencePieceTrainer.train(
    input=corpus,
    model_prefix=os.path.join(tok_dir, "spiece"),
    vocab_size=PIECES,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    minloglevel=2,
  )
  os.remove(corpus)
  os.remove(os.path.join(tok_dir, "spiece.vocab"))
  staging = os.path.join(out_dir, "tokenizer_staging")
  os.makedirs(staging)
  shutil.copy(os.path.join(tok_dir, "spiece.model"), staging)
  transformers.T5Tokenizer.from_pretrained(staging, extra_ids=0).save_pretrained(tok_dir)
  shutil.rmtree(staging)
  return tok_dir


from tiny_diffusers import TINY_WAN22_VAE  # noqa: E402,F401  (the Wan2.2 VAE at a CPU size)

STATS = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0])
BOUNDARY = 0.875  # Wan2.2 T2V-A14B's boundary_ratio


def _dit():
  """A tiny random WanTransformer3DModel (from the current torch seed), every weight perturbed."""
  import diffusers
  import torch

  dit = diffusers.WanTransformer3DModel(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=TEXT_DIM,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=32,
  ).eval()
  with torch.no_grad():  # diffusers zero-initialises some projections: make every weight matter
    for p in dit.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return dit


def _umt5():
  import transformers

  return transformers.UMT5EncoderModel(
    transformers.UMT5Config(
      vocab_size=VOCAB,
      d_model=TEXT_DIM,
      d_kv=8,
      d_ff=48,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
    )
  ).eval()


def _save(root: str, seed: int, vae_kwargs: dict, scheduler, experts: int = 1, **pipeline_kwargs) -> str:
  """A tiny WanPipeline folder: `experts` DiTs, then the VAE and the umT5 drawn from torch seed `seed`."""
  import diffusers
  import torch
  import transformers

  torch.manual_seed(seed)
  dits = [_dit() for _ in range(experts)]
  vae = diffusers.AutoencoderKLWan(**vae_kwargs).eval()
  text = _umt5()
  tokenizer = transformers.AutoTokenizer.from_pretrained(train_tokenizer(root))
  if experts == 2:
    pipeline_kwargs.update(transformer_2=dits[1], boundary_ratio=BOUNDARY)
  parts = dict(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=dits[0], scheduler=scheduler)
  diffusers.WanPipeline(**parts, **pipeline_kwargs).save_pretrained(root)
  return root


def save_wan_pipeline(root: str, seed: int = 0) -> str:
  """Writes a tiny random Wan2.1 WanPipeline folder to `root` with save_pretrained; returns `root`."""
  import diffusers
  from tiny_diffusers import TINY_WAN_VAE  # tests/ is on the path under pytest only

  return _save(root, seed, {**TINY_WAN_VAE, **STATS}, diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0))


def save_wan22_ti2v_pipeline(root: str, seed: int = 0) -> str:
  """A tiny Wan2.2-TI2V-5B-Diffusers: WanPipeline(expand_timesteps=True), the Wan2.2 VAE's structure; returns `root`."""
  import diffusers

  sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
  return _save(root, seed, {**TINY_WAN22_VAE, **STATS}, sched, expand_timesteps=True)


def save_wan22_a14b_pipeline(root: str, seed: int = 0) -> str:
  """A tiny Wan2.2-T2V-A14B-Diffusers: two experts (transformer/ high noise, transformer_2/ low), the Wan2.1 VAE's
  structure; returns `root`."""
  import diffusers
  from tiny_diffusers import TINY_WAN_VAE

  sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0)
  return _save(root, seed, {**TINY_WAN_VAE, **STATS}, sched, experts=2)


CAPTIONS = [
  "A red blood cell flows along the vessel slowly.",
  "The virus enters the cell in a dark field.",
  "A neuron releases vesicles under the microscope, clearly visible.",
  "The mitochondrion divides into two with translucent texture.",
  "A macrophage squeezes through a capillary while the flow halts.",
  "The platelet binds to the receptor as fibres tighten.",
]


def clip(i: int, num_frames: int, size: int = 32):
  """uint8 (F, size, size, 3): a bright disc drifting across a coloured gradient (clip i)."""
  import numpy as np

  yy, xx = np.mgrid[:size, :size] / size
  frames = []
  for t in range(num_frames):
    cx, cy = 0.2 + 0.6 * t / max(num_frames - 1, 1), 0.3 + 0.1 * i
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.02
    base = np.stack([xx, yy, np.full_like(xx, (i % 3) / 2)], axis=-1) * 160
    frames.append(np.where(disc[..., None], 250.0, base))
  return np.asarray(frames, np.uint8)


def write_manual_dir(root: str, num_clips: int = 6, size: int = 32) -> str:
  """A MicroSim-10K release in miniature (the official DiffSynth layout): ROOT/videos/clip<i>.mp4 of
  9..17 frames and ROOT/metadata.csv with `video,prompt` rows. Returns ROOT."""
  import csv

  from microverse_jax import video

  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  rows = []
  for i in range(num_clips):
    name = f"videos/clip{i}.mp4"
    with open(os.path.join(root, name), "wb") as f:
      f.write(video.encode_mp4(clip(i, 9 + (8 * i) // max(num_clips - 1, 1), size), fps=8))
    rows.append({"video": name, "prompt": CAPTIONS[i % len(CAPTIONS)]})
  with open(os.path.join(root, "metadata.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, ["video", "prompt"])
    writer.writeheader()
    writer.writerows(rows)
  return root
