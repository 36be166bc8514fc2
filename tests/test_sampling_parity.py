"""`sample.generate` equals diffusers `WanPipeline` on the same converted tiny random weights, noise
and prompts, with the scheduler set to our sigma grid: Euler and UniPC, classifier-free guidance on.

Also measures how far diffusers' stock scheduler grids are from ours (quoted in docs/model.md).
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from tiny_diffusers import TINY_WAN_DIT, TINY_WAN_VAE, tiny_umt5, word_tokenizer  # noqa: E402

from microverse_jax import convert, diffusion  # noqa: E402
from microverse_jax.models.umt5 import UMT5Tokenizer  # noqa: E402

try:  # generate moves from sample.py (the CLI) to pipeline.py (the Python API)
  from microverse_jax.pipeline import generate  # noqa: E402
except ImportError:
  from microverse_jax.sample import generate  # noqa: E402

SHIFT, STEPS, GUIDANCE, SEED, MAX_LEN = 5.0, 4, 3.0, 7, 12
FRAMES, SIZE = 5, 32  # video; latents (3, 8, 8, 4): VAE 2x temporal, 4x spatial
LATENT = (3, SIZE // 4, SIZE // 4, 4)
PROMPTS = ["a red cell divides in two", "a virus enters a cell"]
NEGATIVE = "blurry static"


class Encoders(nnx.Module):
  """What `generate` needs: text(ids, mask) and decode(latents); the latents it decodes are kept."""

  def __init__(self, text_encoder, vae, captured: list):
    self.text_encoder, self.vae, self.captured = text_encoder, vae, captured

  def text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def decode(self, latents):
    jax.debug.callback(lambda z: self.captured.append(np.asarray(z)), latents)
    return self.vae.decode(self.vae.denormalize_latents(latents))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  """Tiny random diffusers/transformers parts saved with save_pretrained, a word-level tokenizer,
  and our models converted from those directories."""
  root = tmp_path_factory.mktemp("wan_tiny")
  torch.manual_seed(0)
  dit = diffusers.WanTransformer3DModel(**TINY_WAN_DIT).eval()
  with torch.no_grad():
    for p in dit.parameters():
      p.add_(0.05 * torch.randn_like(p))
  vae = diffusers.AutoencoderKLWan(
    **{**TINY_WAN_VAE, "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.8, 1.2, 1.0]}
  ).eval()
  text = tiny_umt5()
  for name, module in (("transformer", dit), ("vae", vae), ("text_encoder", text)):
    module.save_pretrained(root / name)
  os.makedirs(root / "tokenizer")
  word_tokenizer().save(str(root / "tokenizer" / "tokenizer.json"))
  hf_tok = transformers.PreTrainedTokenizerFast(
    tokenizer_file=str(root / "tokenizer" / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )
  ours = {
    kind: convert.from_checkpoint(str(root / name), kind)
    for kind, name in (("dit", "transformer"), ("vae", "vae"), ("umt5", "text_encoder"))
  }
  return dict(
    dit=dit, vae=vae, text=text, hf_tok=hf_tok, tokenizer=UMT5Tokenizer(str(root / "tokenizer"), MAX_LEN), ours=ours
  )


def _scheduler(name: str):
  """A diffusers scheduler whose set_timesteps(n) uses our grid (shift applied by the scheduler)."""
  if name == "euler":
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
  else:
    sched = diffusers.UniPCMultistepScheduler(
      prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT, solver_order=2, solver_type="bh2"
    )
  stock = sched.set_timesteps

  def ours(num_inference_steps=None, device=None, **kwargs):
    stock(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].copy(), device=device)
    # UniPC hands the model integer timesteps (floor(1000 sigma): 937 for 937.5); ours are exact.
    sched.timesteps = (sched.sigmas[:-1] * sched.config.num_train_timesteps).to(torch.float32)

  sched.set_timesteps = ours
  return sched


def _ours(parts, sampler):
  """(final latents (B, F', H', W', C), uint8 videos) from `generate`."""
  captured = []
  encoders = Encoders(parts["ours"]["umt5"], parts["ours"]["vae"], captured)
  videos = generate(
    parts["ours"]["dit"],
    encoders,
    parts["tokenizer"],
    PROMPTS,
    LATENT,
    steps=STEPS,
    guidance=GUIDANCE,
    shift=SHIFT,
    sampler=sampler,
    seed=SEED,
    negative_prompt=NEGATIVE,
    batch_size=2,
  )
  return np.concatenate(captured), np.stack(videos).astype(np.float64)


def _diffusers(parts, sampler):
  """(final latents channels-last, frames rounded to uint8 levels) from WanPipeline on our grid."""
  sched = _scheduler(sampler)
  sched.set_timesteps(STEPS)
  assert np.abs(sched.sigmas.numpy() - diffusion.inference_sigmas(STEPS, SHIFT)).max() < 2e-6
  pipe = diffusers.WanPipeline(
    tokenizer=parts["hf_tok"], text_encoder=parts["text"], vae=parts["vae"], transformer=parts["dit"], scheduler=sched
  )
  noise = np.stack(
    [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(SEED), i), LATENT)) for i in range(len(PROMPTS))]
  )  # what generate draws for prompt i
  final = {}

  def keep(pipeline, i, t, kwargs):
    final["latents"] = kwargs["latents"].clone()
    return kwargs

  with torch.no_grad():
    out = pipe(
      prompt=PROMPTS,
      negative_prompt=NEGATIVE,
      height=SIZE,
      width=SIZE,
      num_frames=FRAMES,
      num_inference_steps=STEPS,
      guidance_scale=GUIDANCE,
      max_sequence_length=MAX_LEN,
      latents=torch.from_numpy(noise).permute(0, 4, 1, 2, 3),
      output_type="np",
      callback_on_step_end=keep,
    ).frames
  latents = final["latents"].permute(0, 2, 3, 4, 1).numpy()
  assert np.abs(latents - noise).max() > 0.5  # the sampler moved: a non-trivial comparison
  return latents, np.round(np.asarray(out) * 255.0)


def _assert_parity(ours, ref, sampler):
  (ours_latents, ours_frames), (ref_latents, ref_frames) = ours, ref
  latent_err, frame_err = np.abs(ours_latents - ref_latents).max(), np.abs(ours_frames - ref_frames).max()
  print(f"{sampler}: latents max |diff| {latent_err:.2e}, frames max |diff| {int(frame_err)} uint8 level(s)")
  assert ours_frames.shape == ref_frames.shape == (2, FRAMES, SIZE, SIZE, 3)
  assert latent_err <= 1e-5, latent_err
  assert frame_err <= 1, frame_err
  assert ours_frames.std() > 1  # frames are not a constant image


def test_euler_generate_equals_diffusers_wan_pipeline(parts):
  _assert_parity(_ours(parts, "euler"), _diffusers(parts, "euler"), "euler")


def test_unipc_generate_equals_diffusers_wan_pipeline(parts):
  """Both start UniPC's lambda at sigma 1 - 1e-6 (diffusion._lam): a finite log(alpha) keeps the
  second-order terms of the first updates (from exactly 1 the latents differed by ~1.4e-3 at 4 steps)."""
  _assert_parity(_ours(parts, "unipc"), _diffusers(parts, "unipc"), "unipc")


def stock_grid_difference(num_steps: int, sampler: str = "euler") -> float:
  """Max |sigma_diffusers_stock - sigma_ours| over the num_steps + 1 sigmas, at shift 5."""
  if sampler == "euler":
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
  else:
    sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
  sched.set_timesteps(num_steps)
  return float(np.abs(sched.sigmas.numpy().astype(np.float64) - diffusion.inference_sigmas(num_steps, SHIFT)).max())


def test_stock_diffusers_grids_differ_from_ours_as_documented():
  """The figures quoted in docs/model.md (stock schedulers at shift 5)."""
  measured = {(s, n): stock_grid_difference(n, s) for s in ("euler", "unipc") for n in (4, 50)}
  print({k: round(v, 4) for k, v in measured.items()})
  assert measured[("euler", 4)] == pytest.approx(0.6006, abs=1e-3)
  assert measured[("euler", 50)] == pytest.approx(0.0682, abs=1e-3)
  assert measured[("unipc", 4)] == pytest.approx(0.00094, abs=1e-4)
  assert measured[("unipc", 50)] == pytest.approx(0.00419, abs=1e-4)
