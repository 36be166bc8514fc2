"""Image-to-video sampling (issue 27, item 3): whole `Pipeline` runs equal diffusers `WanImageToVideoPipeline` on
tiny random weights, same noise, 4 UniPC steps on our sigma grid, CFG on, fp32. Two mechanisms:

- "ti2v": Wan2.2 TI2V-5B, a `WanPipeline(expand_timesteps=True)` folder (Wan2.2 VAE) loaded by both sides;
  frame 0 is the clean image latent, timestep 0 on its tokens. The image is resized and centre-cropped first.
- "concat": Wan2.2 I2V-A14B style with one expert (Wan2.1 VAE settings, transformer in_channels = 2 z + 4): the
  frame mask and the latents of [image, zero frames] concatenated to the input channels.

Also: the one-line refusals (an image for a text-to-video model, none for a concat model), the CLI's --image and
the prompts JSONL `first_frame` column.
"""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from tiny_diffusers import (  # noqa: E402
  TINY_WAN22_VAE as TINY_WAN22_BASE,  # noqa: E402
  TINY_WAN_DIT,
  tiny_tokenizer,
  tiny_umt5,
)

from microverse_jax import diffusion, encoders, pipeline, plans, sample  # noqa: E402
from microverse_jax.configs import microsim_tiny, wan2_1  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIFT, STEPS, GUIDANCE, SEED, MAX_LEN, FRAMES = 5.0, 4, 3.0, 7, 12, 9
PROMPTS = ["a red cell divides in two", "a virus enters a cell"]
NEGATIVE = "blurry static"
STATS = dict(latents_mean=[0.3, -0.2, 0.1, 0.5], latents_std=[0.5, 1.5, 0.8, 2.0])
# Wan2.2 VAE settings at a CPU size (16x spatial, 4x temporal, 2x2 patchify; WanVAEConfig "tiny-wan2.2").
TINY_WAN22_VAE = dict(
  **TINY_WAN22_BASE,
  **STATS,
)
# Wan2.1 VAE settings at a CPU size (8x spatial, 4x temporal: four mask channels, as the real I2V models have).
TINY_WAN21_VAE = dict(
  base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True]
)
CASES = {  # mechanism: (VAE kwargs, transformer in_channels, video (H, W), conditioning image (H, W))
  "ti2v": (TINY_WAN22_VAE, 4, (64, 96), (100, 120)),  # resized 120x100 -> 96x80, cropped to 96x64
  "concat": ({**TINY_WAN21_VAE, **STATS}, 12, (48, 64), (48, 64)),
}


def _perturbed(module, scale, names=("",)):
  """`module` with noise added to its parameters ending in one of `names` (all by default)."""
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith(names):
        p.add_(scale * torch.randn_like(p))
  return module.eval()


def _save_folder(root, mechanism):
  """A tiny diffusers Wan pipeline folder: WanPipeline(expand_timesteps=True) for "ti2v" (as Wan2.2-TI2V-5B-Diffusers
  is), WanImageToVideoPipeline without image encoder for "concat"."""
  vae_kwargs, in_channels, _, _ = CASES[mechanism]
  torch.manual_seed(0)
  dit = _perturbed(diffusers.WanTransformer3DModel(**{**TINY_WAN_DIT, "in_channels": in_channels}), 0.05)
  vae = _perturbed(diffusers.AutoencoderKLWan(**vae_kwargs), 0.2, ("gamma", "bias"))
  text = tiny_umt5()
  hf_tok = tiny_tokenizer()
  sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
  parts = dict(tokenizer=hf_tok, text_encoder=text, vae=vae, scheduler=sched, transformer=dit)
  if mechanism == "ti2v":
    diffusers.WanPipeline(**parts, expand_timesteps=True).save_pretrained(root)
  else:
    diffusers.WanImageToVideoPipeline(**parts).save_pretrained(root)
  return str(root)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  return {m: _save_folder(tmp_path_factory.mktemp(m), m) for m in CASES}


def _image(height, width, seed=0):
  """A smooth uint8 (H, W, 3) test picture: gradients plus noise."""
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  rgb = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 90 + 128
  return np.clip(rgb + np.random.default_rng(seed).normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)


def _official_fit(image, height, width):
  """Wan2.2's textimage2video.py preprocessing, written out: Lanczos resize to cover, centre crop."""
  img = Image.fromarray(image)
  scale = max(width / img.width, height / img.height)
  img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
  left, top = (img.width - width) // 2, (img.height - height) // 2
  return img.crop((left, top, left + width, top + height))


def _noise(latent_shape):
  """What `generate` draws for prompt i: normal(fold_in(key(SEED), i)), (B, F', H', W', C)."""
  return np.stack(
    [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(SEED), i), latent_shape)) for i in range(2)]
  )


def _config():
  c = wan2_1.get_config("1.3b,full,runlocal")  # fp32; the folder brings the architecture and weights
  c.text.max_length = MAX_LEN
  return c


class Capturing(encoders.Encoders):
  """The pipeline's encoders, keeping the latents they decode."""

  def __init__(self, encoders, captured: list):
    super().__init__(encoders.text_encoder, encoders.vae)
    self.captured = captured

  def decode(self, latents, tiled: bool = False):
    jax.debug.callback(lambda z: self.captured.append(np.asarray(z)), latents)
    return super().decode(latents, tiled)


def _ours(folder, image, size):
  """(final latents (B, F', H', W', C), uint8 videos, the pipeline) from Pipeline.from_pretrained(folder)."""
  pipe = pipeline.Pipeline.from_pretrained(folder, config=_config())
  captured = []
  pipe.encoders = Capturing(pipe.encoders, captured)
  videos = pipe(
    PROMPTS,
    image=image,
    num_frames=FRAMES,
    height=size[0],
    width=size[1],
    seed=SEED,
    steps=STEPS,
    guidance=GUIDANCE,
    shift=SHIFT,
    sampler="unipc",
    negative_prompt=NEGATIVE,
    batch_size=2,
    tiled=False,
  )
  return np.concatenate(captured), np.stack(videos).astype(np.float64), pipe


def _unipc_on_our_grid():
  """diffusers' UniPC (bh2, order 2, flow prediction) whose set_timesteps(n) gives our sigmas and exact timesteps."""
  sched = diffusers.UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT, solver_order=2, solver_type="bh2"
  )
  stock = sched.set_timesteps

  def ours(num_inference_steps=None, device=None, **kwargs):
    stock(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].copy(), device=device)
    sched.timesteps = (sched.sigmas[:-1] * sched.config.num_train_timesteps).to(torch.float32)

  sched.set_timesteps = ours
  return sched


def _diffusers(folder, image, size, latent_shape, monkeypatch):
  """(final latents channels-last, frames rounded to uint8 levels) from WanImageToVideoPipeline on our grid."""
  from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

  # diffusers 0.42's I2V prompt cleaning calls ftfy even when it is not installed; WanPipeline's skips it (the
  # prompts here are plain ASCII, which ftfy leaves alone).
  monkeypatch.setattr(pipeline_wan_i2v, "basic_clean", pipeline_wan.basic_clean)
  ref = diffusers.WanImageToVideoPipeline.from_pretrained(folder, scheduler=_unipc_on_our_grid())
  noise = _noise(latent_shape)
  with torch.no_grad():
    latents = ref(
      image=image,
      prompt=PROMPTS,
      negative_prompt=NEGATIVE,
      height=size[0],
      width=size[1],
      num_frames=FRAMES,
      num_inference_steps=STEPS,
      guidance_scale=GUIDANCE,
      max_sequence_length=MAX_LEN,
      latents=torch.from_numpy(noise).permute(0, 4, 1, 2, 3),
      output_type="latent",
    ).frames
    std, mean = (torch.tensor(ref.vae.config[k]).view(1, -1, 1, 1, 1) for k in ("latents_std", "latents_mean"))
    video = ref.vae.decode(latents * std + mean).sample  # as the pipeline decodes
  frames = np.round((video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy() * 255.0)
  latents = latents.permute(0, 2, 3, 4, 1).numpy()
  assert np.abs(latents[:, 1:] - noise[:, 1:]).max() > 0.5  # the sampler moved: a non-trivial comparison
  return latents, frames


def _assert_parity(ours, ref, mechanism, size):
  (ours_latents, ours_frames), (ref_latents, ref_frames) = ours, ref
  latent_err, frame_err = np.abs(ours_latents - ref_latents).max(), np.abs(ours_frames - ref_frames).max()
  print(f"{mechanism}: latents max |diff| {latent_err:.2e}, frames max |diff| {int(frame_err)} uint8 level(s)")
  assert ours_frames.shape == ref_frames.shape == (2, FRAMES, *size, 3)
  assert latent_err <= 1e-5, latent_err
  assert frame_err <= 1, frame_err
  assert ours_frames.std() > 1


def test_ti2v_pipeline_equals_diffusers(folders, capsys, monkeypatch):
  """Wan2.2 TI2V: frame 0 held at the clean image latent, timestep 0 on its tokens, the image fitted to the size."""
  vae_kwargs, _, size, image_size = CASES["ti2v"]
  image = _image(*image_size)
  ours_latents, ours_frames, pipe = _ours(folders["ti2v"], image, size)
  assert "image: 120x100 resized to 96x80, centre-cropped to 96x64" in capsys.readouterr().out
  assert pipe.config.diffusion.image_conditioning == "ti2v"  # from the folder's model_index.json
  latent_shape = pipe.plan.latent_shape_of(FRAMES, *size)
  assert latent_shape == (3, 4, 6, 4)
  ref = _diffusers(folders["ti2v"], _official_fit(image, *size), size, latent_shape, monkeypatch)
  _assert_parity((ours_latents, ours_frames), ref, "ti2v", size)
  clean = pipe.encoders.encode(np.asarray(_official_fit(image, *size))[None, None] / 127.5 - 1.0)
  assert np.abs(ours_latents[:, :1] - np.asarray(clean)).max() < 1e-5  # frame 0 is the image's latent


def test_concat_pipeline_equals_diffusers(folders, capsys, monkeypatch):
  """Wan2.2 I2V-A14B style (one expert, no CLIP): [noisy latents, frame mask, image latents] on the channels."""
  _, _, size, image_size = CASES["concat"]
  image = _image(*image_size, seed=1)
  ours_latents, ours_frames, pipe = _ours(folders["concat"], image, size)
  assert "resized" not in capsys.readouterr().out  # the image already has the video's size
  assert pipe.config.diffusion.image_conditioning == "concat"  # transformer in_channels 12 != out_channels 4
  latent_shape = pipe.plan.latent_shape_of(FRAMES, *size)
  assert latent_shape == (3, 6, 8, 4) and pipe.model.cfg.in_channels == 2 * 4 + 4
  ref = _diffusers(folders["concat"], Image.fromarray(image), size, latent_shape, monkeypatch)
  _assert_parity((ours_latents, ours_frames), ref, "concat", size)


def test_image_for_a_text_to_video_model_and_none_for_a_concat_model_are_refused():
  c = microsim_tiny.get_config("test")
  assert diffusion.image_conditioning(c.diffusion) == "none"
  pipe = pipeline.Pipeline(plans.resolve(c, 1), None, None, None)  # refused before the model is used
  with pytest.raises(ValueError, match=r"^a conditioning image was given, but the model is text-to-video only"):
    pipe(["a cell"], image=_image(32, 32))
  c.diffusion.image_conditioning = "concat"
  with pytest.raises(ValueError, match=r"needs a conditioning image"):
    pipe(["a cell"])
  c.diffusion.image_conditioning = "i2v"
  with pytest.raises(ValueError, match=r"diffusion.image_conditioning='i2v': expected one of"):
    pipe(["a cell"])


def test_folder_conditioning_reads_the_folder(folders, tmp_path):
  """(Two-expert folders: tests/test_experts_sampling.py.)"""
  cfg = plans.dit_config(wan2_1.get_config("1.3b,full,runlocal"))  # in == out channels
  assert pipeline.folder_conditioning(folders["ti2v"], cfg) == "ti2v"
  assert pipeline.folder_conditioning(str(tmp_path), cfg) == "none"  # no model_index.json: the transformer's channels


def test_load_image_fits_paths_and_arrays_and_names_bad_ones(tmp_path, capsys):
  picture = _image(30, 50)
  Image.fromarray(picture).save(tmp_path / "wide.png")
  fitted = pipeline.load_image(str(tmp_path / "wide.png"), 32, 32)
  assert fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8
  assert np.array_equal(fitted, np.asarray(_official_fit(picture, 32, 32)))
  assert f"{tmp_path / 'wide.png'}: 50x30 resized to 53x32, centre-cropped to 32x32" in capsys.readouterr().out
  assert np.array_equal(pipeline.load_image(picture, 30, 50), picture)  # the right size: untouched, no note
  assert capsys.readouterr().out == ""
  (tmp_path / "bad.png").write_text("not a png")
  for bad in ("bad.png", "missing.png"):
    with pytest.raises(ValueError, match=rf"{bad}: not a readable image"):
      pipeline.load_image(str(tmp_path / bad), 32, 32)
  with pytest.raises(ValueError, match=r"expected uint8 \(H, W, 3\)"):
    pipeline.load_image(picture.astype(np.float32), 32, 32)


def _flags(**kw):
  return types.SimpleNamespace(**{"prompt": None, "rubrics": None, "prompts": None, "split": None, "indices": "", **kw})


def test_first_frame_column_and_image_flag_make_the_jobs(tmp_path):
  Image.fromarray(_image(32, 32)).save(tmp_path / "a.png")
  rows = [{"id": "x", "caption": "a cell", "first_frame": "a.png"}, {"id": "y", "caption": "a virus"}]
  prompts = tmp_path / "rows.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert sample.load_prompts(str(prompts)) == [("x", "a cell", str(tmp_path / "a.png")), ("y", "a virus", None)]
  with pytest.raises(ValueError, match=r"rows \['y'\] have no first_frame but others do"):
    sample.jobs_from_flags(_flags(prompts=str(prompts), out=str(tmp_path / "out")))
  given = np.zeros((32, 32, 3), np.uint8)
  jobs = sample.jobs_from_flags(_flags(prompts=str(prompts), out=str(tmp_path / "out")), given)
  assert [(j.noise_id, j.prompt, j.path) for j in jobs] == [
    (0, "a cell", f"{tmp_path}/out/x.mp4"),
    (1, "a virus", f"{tmp_path}/out/y.mp4"),
  ]
  assert jobs[0].image == str(tmp_path / "a.png") and jobs[1].image is given
  assert sample.jobs_from_flags(_flags(prompt="a cell", out=None), given)[0].image is given
  prompts.write_text(json.dumps({"id": "z", "caption": "a cell", "first_frame": "gone.png"}) + "\n")
  with pytest.raises(ValueError, match=r"rows.jsonl:1: first_frame .*gone.png: no such file"):
    sample.load_prompts(str(prompts))


def _run(*args):
  cmd = [sys.executable, "-m", "microverse_jax.sample", "--config=configs/wan2_1.py:1.3b,full,runlocal", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_image_and_first_frame_column(folders, tmp_path):
  """The documented commands on the tiny TI2V folder: --image for --prompt, and a JSONL's first_frame column;
  a concat model without an image is one line, before any weights load."""
  Image.fromarray(_image(64, 96)).save(tmp_path / "first.png")
  Image.fromarray(_image(80, 80, seed=2)).save(tmp_path / "other.png")
  rows = [{"id": "r0", "caption": "a red cell", "first_frame": "first.png"}, {"id": "r1", "caption": "a virus"}]
  prompts = tmp_path / "rows.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = [f"--config.text.max_length={MAX_LEN}", "--num_frames=9", "--height=64", "--width=96", "--steps=2"]
  out = tmp_path / "out"
  run = _run(
    f"--checkpoint={folders['ti2v']}",
    f"--prompts={prompts}",
    f"--image={tmp_path / 'other.png'}",
    f"--out={out}",
    *common,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert "other.png: 80x80 resized to 96x96, centre-cropped to 96x64" in run.stdout
  assert sorted(os.listdir(out)) == ["r0.mp4", "r1.mp4"]
  run = _run(f"--checkpoint={folders['concat']}", "--prompt=a cell", f"--out={tmp_path / 'c.mp4'}", *common)
  assert run.returncode == 2 and "Traceback" not in run.stderr
  assert "needs a conditioning image" in run.stderr.strip().splitlines()[-1]
