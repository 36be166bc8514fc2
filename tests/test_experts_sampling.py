"""Two experts (Wan2.2 A14B): `Pipeline.from_pretrained` on a diffusers folder with transformer/ and transformer_2/
(boundary_ratio in model_index.json) samples as diffusers `WanPipeline` does: transformer/ with guidance while
t >= 1000 boundary_ratio, transformer_2/ with guidance_2 below. Tiny random weights, same noise, fp32, Euler on our
sigma grid, a boundary mid-schedule so that both experts run.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from tiny_diffusers import TINY_WAN_DIT, TINY_WAN_VAE, tiny_tokenizer, tiny_umt5  # noqa: E402

from microverse_jax import diffusion, encoders, pipeline  # noqa: E402
from microverse_jax.configs import wan2_1  # noqa: E402

SHIFT, STEPS, GUIDANCE, GUIDANCE_2, SEED, MAX_LEN = 5.0, 4, 3.0, 1.5, 7, 12
BOUNDARY = 0.875  # Wan2.2 T2V-A14B's; timesteps 1000, 937.5 | 833.3, 625 on the 4-step grid at shift 5
FRAMES, SIZE = 5, 32  # latents (3, 8, 8, 4)
PROMPTS = ["a red cell divides in two", "a virus enters a cell"]
NEGATIVE = "blurry static"


def _dit(seed):
  torch.manual_seed(seed)
  dit = diffusers.WanTransformer3DModel(**TINY_WAN_DIT).eval()
  with torch.no_grad():
    for p in dit.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return dit


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A tiny two-expert WanPipeline folder (save_pretrained), its experts seeded differently."""
  root = tmp_path_factory.mktemp("wan_a14b_tiny")
  vae = diffusers.AutoencoderKLWan(
    **{**TINY_WAN_VAE, "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.8, 1.2, 1.0]}
  ).eval()
  text = tiny_umt5()
  hf_tok = tiny_tokenizer()
  diffusers.WanPipeline(
    tokenizer=hf_tok,
    text_encoder=text,
    vae=vae,
    transformer=_dit(0),
    transformer_2=_dit(1),
    scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT),
    boundary_ratio=BOUNDARY,
  ).save_pretrained(root)
  return str(root)


def _noise():
  """What `generate` draws for prompt i: normal(fold_in(key(SEED), i)), (B, F', H', W', C)."""
  shape = (3, SIZE // 4, SIZE // 4, 4)
  return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(SEED), i), shape)) for i in (0, 1)])


class Capturing(encoders.Encoders):
  """The pipeline's encoders, keeping the latents they decode."""

  def __init__(self, encoders, captured: list):
    super().__init__(encoders.text_encoder, encoders.vae)
    self.captured = captured

  def decode(self, latents, tiled: bool = False):
    jax.debug.callback(lambda z: self.captured.append(np.asarray(z)), latents)
    return super().decode(latents, tiled)


def _ours(pipe, **settings):
  """(final latents (B, F', H', W', C), uint8 videos) from the pipeline."""
  captured = []
  encoders, pipe.encoders = pipe.encoders, Capturing(pipe.encoders, captured)
  try:
    videos = pipe(
      PROMPTS,
      num_frames=FRAMES,
      height=SIZE,
      width=SIZE,
      seed=SEED,
      steps=STEPS,
      guidance=GUIDANCE,
      shift=SHIFT,
      sampler="euler",
      negative_prompt=NEGATIVE,
      batch_size=2,
      tiled=False,
      **settings,
    )
  finally:
    pipe.encoders = encoders
  return np.concatenate(captured), np.stack(videos).astype(np.float64)


def _diffusers(folder, calls):
  """(final latents channels-last, frames rounded to uint8 levels) from WanPipeline on our sigma grid; `calls` gets
  the timesteps each expert ran at."""
  sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
  stock = sched.set_timesteps

  def ours(num_inference_steps=None, device=None, **kwargs):
    stock(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].copy(), device=device)

  sched.set_timesteps = ours
  ref = diffusers.WanPipeline.from_pretrained(folder, scheduler=sched)
  assert ref.config.boundary_ratio == BOUNDARY
  for name in ("transformer", "transformer_2"):
    getattr(ref, name).register_forward_hook(
      lambda m, args, kwargs, out, name=name: calls[name].append(float(kwargs["timestep"][0])), with_kwargs=True
    )
  final = {}

  def keep(pipeline, i, t, kwargs):
    final["latents"] = kwargs["latents"].clone()
    return kwargs

  with torch.no_grad():
    out = ref(
      prompt=PROMPTS,
      negative_prompt=NEGATIVE,
      height=SIZE,
      width=SIZE,
      num_frames=FRAMES,
      num_inference_steps=STEPS,
      guidance_scale=GUIDANCE,
      guidance_scale_2=GUIDANCE_2,
      max_sequence_length=MAX_LEN,
      latents=torch.from_numpy(_noise()).permute(0, 4, 1, 2, 3),
      output_type="np",
      callback_on_step_end=keep,
    ).frames
  return final["latents"].permute(0, 2, 3, 4, 1).numpy(), np.round(np.asarray(out) * 255.0)


def test_two_expert_pipeline_equals_diffusers(folder, capsys):
  c = wan2_1.get_config("1.3b,full,runlocal")  # fp32; the folder brings the architecture and weights
  c.text.max_length = MAX_LEN
  pipe = pipeline.Pipeline.from_pretrained(folder, config=c)
  assert pipe.boundary == BOUNDARY and pipe.model_2 is not None
  ours_latents, ours_frames = _ours(pipe, guidance_2=GUIDANCE_2)
  calls = {"transformer": [], "transformer_2": []}
  ref_latents, ref_frames = _diffusers(folder, calls)
  # each expert ran its side of the boundary (conditional and unconditional passes)
  assert sorted(set(calls["transformer"])) == [937.5, 1000.0], calls
  assert [round(t, 1) for t in sorted(set(calls["transformer_2"]))] == [625.0, 833.3], calls
  latent_err, frame_err = np.abs(ours_latents - ref_latents).max(), np.abs(ours_frames - ref_frames).max()
  with capsys.disabled():
    print(f"\ntwo experts: latents max |diff| {latent_err:.2e}, frames max |diff| {int(frame_err)} uint8 level(s)")
  assert np.abs(ref_latents - _noise()).max() > 0.5  # the sampler moved
  assert latent_err <= 1e-5, latent_err
  assert frame_err <= 1, frame_err
  # not a trivial match: one expert throughout, or guidance_2 left at guidance, samples something else
  model_2 = pipe.model_2
  pipe.model_2 = pipe.model
  try:
    assert np.abs(_ours(pipe, guidance_2=GUIDANCE_2)[0] - ref_latents).max() > 1e-3
  finally:
    pipe.model_2 = model_2
  assert np.abs(_ours(pipe)[0] - ref_latents).max() > 1e-3
  pipe.config.sample.guidance_2 = GUIDANCE_2  # the pair config's scale (configs/wan2_2.py:t2v_a14b) when none is given
  np.testing.assert_array_equal(_ours(pipe)[0], ours_latents)


def test_switched_picks_the_expert_by_timestep():
  fn = diffusion.switched(lambda x, t: "high", lambda x, t: "low", BOUNDARY * diffusion.NUM_TRAIN_TIMESTEPS)
  t = lambda v: np.full((2,), v, np.float32)
  assert [fn(None, t(v)) for v in (1000.0, 875.0, 874.9, 0.0)] == ["high", "high", "low", "low"]


def test_two_expert_arguments_are_checked(folder, tmp_path):
  assert pipeline.folder_boundary(folder) == BOUNDARY
  assert pipeline.folder_boundary(str(tmp_path)) is None  # no model_index.json: one transformer
  (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.9}))
  with pytest.raises(ValueError, match=r"two-expert Wan2.2 A14B pipeline \(boundary_ratio\) without transformer_2/"):
    pipeline.folder_boundary(str(tmp_path))
  with pytest.raises(ValueError, match="give model_2 with boundary"):
    pipeline.generate(None, None, None, PROMPTS, (3, 8, 8, 4), guidance_2=2.0)
  with pytest.raises(ValueError, match="guidance_2=nan: expected a finite number"):
    pipeline.check_settings({"guidance_2": float("nan")})


def test_cli_guidance_2_needs_a_two_expert_folder(tmp_path):
  cmd = [sys.executable, "-m", "microverse_jax.sample", f"--checkpoint={tmp_path}", "--config=configs/wan2_1.py:1.3b"]
  cmd += ["--prompt=cells divide", f"--out={tmp_path / 'x.mp4'}", "--guidance_2=2"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
  assert run.returncode == 2 and not (tmp_path / "x.mp4").exists(), run.stderr[-2000:]
  refusal = "error: --guidance_2: only for a two-expert (Wan2.2 A14B) diffusers folder given as --checkpoint"
  assert run.stderr.strip() == refusal, run.stderr[-2000:]


def test_experts_of_different_shapes_are_refused_with_the_key_and_both_shapes(folder, tmp_path):
  import shutil

  odd = tmp_path / "odd"
  shutil.copytree(folder, odd, symlinks=True)
  shutil.rmtree(odd / "transformer_2")
  torch.manual_seed(2)
  diffusers.WanTransformer3DModel(**{**TINY_WAN_DIT, "ffn_dim": 2 * TINY_WAN_DIT["ffn_dim"]}).save_pretrained(
    odd / "transformer_2"
  )
  ffn = TINY_WAN_DIT["ffn_dim"]
  with pytest.raises(ValueError, match=rf"experts differ at blocks/ffn_in/bias: transformer/ \(2, {ffn}\), "):
    pipeline.Pipeline.from_pretrained(str(odd))
