"""Wan2.2 fine-tuning on MicroSim-10K: TI2V-5B (text or a first frame, one model) and one A14B expert.

  --config=configs/wan2_2.py:ti2v_5b,lora                 (TI2V-5B: Wan2.2 VAE, 704x1280, 121 frames, 24 fps)
  --config=configs/wan2_2.py:t2v_a14b,full,expert=high    (T2V-A14B's high-noise expert, timesteps >= 875)
  --config=configs/wan2_2.py:i2v_a14b,lora,expert=low     (I2V-A14B's low-noise expert, timesteps < 900)
  --config=configs/wan2_2.py:t2v_a14b                      (both A14B experts: sampling a two-expert folder)
  --config=configs/wan2_2.py:ti2v_5b,lora,runlocal        (any variant shrunk for a CPU smoke run)

arg: comma-separated variants: model ti2v_5b | t2v_a14b | i2v_a14b; mode lora | full; expert=high | expert=low
(A14B: each expert is its own run and checkpoint, `transformer/` and `transformer_2/` of the diffusers folder;
without expert=, the pair, which samples and does not train);
480p | 720p (A14B); runlocal. The rest is configs/wan2_1.py's recipe (LoRA rank 32 at lr 1e-4, full at 1e-5,
epochs, batch, lr scaling). Sizes, boundaries and sampling settings are the official Wan2.2 configs' (wan/configs/
wan_ti2v_5B.py, wan_t2v_A14B.py, wan_i2v_A14B.py). Assumptions (no official training code): training uses the
sampling shift; TI2V-5B trains half its examples text to video (train.text_only_rate 0.5); an expert's sample.guidance
is the official scale of its noise range.
"""

import ml_collections

from microverse_jax import diffusion
from microverse_jax.configs import base, wan2_1

MODELS = ("ti2v_5b", "t2v_a14b", "i2v_a14b")
VARIANTS = {*MODELS, "lora", "full", "expert=high", "expert=low", "480p", "720p", "runlocal"}
# model -> (image conditioning, diffusion.boundary_ratio, shift, sample steps, guidance of (high, low) noise)
OFFICIAL = {
  "ti2v_5b": ("ti2v", 0.0, 5.0, 50, (5.0, 5.0)),
  "t2v_a14b": ("none", 0.875, 12.0, 40, (4.0, 3.0)),
  "i2v_a14b": ("concat", 0.9, 5.0, 40, (3.5, 3.5)),
}


def get_config(arg: str = "ti2v_5b,lora") -> ml_collections.ConfigDict:
  variants = base.variants(arg, VARIANTS, "configs/wan2_2.py")
  models = [m for m in MODELS if m in variants]
  experts = [v.partition("=")[2] for v in variants if v.startswith("expert=")]
  if len(models) != 1 or len(experts) > 1:
    raise ValueError(f"configs/wan2_2.py:{arg}: name one model of {MODELS} and at most one expert=high|low")
  model, expert = models[0], (experts or [""])[0]
  if model == "ti2v_5b" and expert:
    raise ValueError(f"configs/wan2_2.py:{arg}: TI2V-5B is one model, no expert=")
  if model == "ti2v_5b" and {"480p", "720p"} & variants:
    raise ValueError(f"configs/wan2_2.py:{arg}: TI2V-5B trains at 704x1280 (no 480p / 720p variant)")
  mode, boundary, shift, steps, (guidance_high, guidance_low) = OFFICIAL[model]
  rest = [v for v in variants if v in ("lora", "full", "480p", "720p", "runlocal")]
  c = wan2_1.get_config(",".join(["1.3b" if model == "ti2v_5b" else "14b", *rest]))

  c.diffusion.update(image_conditioning=mode, boundary_ratio=boundary, shift=shift)
  c.train.update(expert=expert, text_only_rate=0.5 if mode == "ti2v" else 0.0)
  c.sample.update(steps=steps, guidance=guidance_low if expert == "low" else guidance_high)
  if boundary and not expert:  # the pair: transformer/ at the high-noise scale, transformer_2/ at the low-noise one
    c.sample.guidance_2 = guidance_low
  if "runlocal" in variants:  # wan2_1's tiny sizes; the Wan2.2 VAE's structure (16x spatial) for TI2V-5B
    vae = "tiny-wan2.2" if model == "ti2v_5b" else "tiny"
    temporal = {"tiny-wan2.2": 4, "tiny": 2}[vae]
    c.autoencoder.preset = vae
    c.model.in_channels = diffusion.model_in_channels(mode, 4, temporal)  # the tiny VAEs' 4 latent channels
    c.sample.steps = 4
    return c
  c.init_from = ""  # python -m microverse_jax.convert dit --src <Wan2.2-*-Diffusers/transformer[_2]> --out DIR
  if model == "ti2v_5b":
    c.model.update(num_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)  # dim 3072
    c.autoencoder.preset = "wan2.2"  # z_dim 48, 16x16 spatial and 4x temporal
    c.data.update(num_frames=121, height=704, width=1280)
    c.sample.fps = 24
  else:
    c.model.in_channels = diffusion.model_in_channels(mode, 16, 4)  # I2V: 36 (noisy 16, mask 4, image 16)
  if mode == "concat":  # the image latents encode frame 0 and blank frames: raw clips, not the latent cache
    c.data.update(name="microsim10k", source="video")
  return c
