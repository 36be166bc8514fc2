"""The real Wan2.2 path end to end, as a user runs it (docs/wan2_2.md), on tiny random weights.

Two tiny diffusers folders written with `save_pretrained` (tests/real_path_models.py): a Wan2.2-TI2V-5B-Diffusers
(`WanPipeline(expand_timesteps=True)`, the Wan2.2 VAE's structure) and a Wan2.2-T2V-A14B-Diffusers (transformer/ and
transformer_2/, boundary_ratio 0.875, the Wan2.1 VAE), the same umT5 and sentencepiece tokenizer. Every step runs
through its real CLI in a subprocess, the docs' command with tiny sizes (tests/real_path_wan2_2.py):
TI2V-5B: convert, build, encode, LoRA with image conditioning from the cache, text-to-video (--rubrics) and
image-to-video (--image, a prompts JSONL's first_frame) from the workdir, export to diffusers (loaded by diffusers:
the same velocity as our trained model). A14B: convert both experts, encode, LoRA on the low-noise expert, export it
into a linked copy of the pipeline folder (the partner untouched), sample that two-expert folder (the switch at the
boundary), and diffusers loads it with the trained expert.

The default (CI) variant runs that chain (two subprocesses at a time, ~3 min on 2 cores); `heavy` adds full
fine-tuning from raw video with more steps, and samples it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_path_chain as rp  # noqa: E402
import real_path_models  # noqa: E402
import real_path_wan2_2 as w22  # noqa: E402

BENCH = os.path.join(rp.REPO, "..", "shared", "microworldbench")
CHEAP = (  # in start order: the two critical paths first
  "convert_dit",
  "convert_vae",
  "convert_umt5",
  "build",
  "encode",
  "train_lora",
  "convert_low",
  "encode_a14b",
  "train_a14b",
  "sample_t2v",
  "copy_a14b",
  "export_a14b",
  "sample_a14b",
  "sample_image",
  "sample_prompts",
  "export",
  "convert_high",
)
HEAVY = ("train_full_video", "sample_full_video")
TASKS = (1, 2)
PROMPTS = [("cell", "The nucleus divides into two slowly.", "first.png")]
PROMPTS += [("virus", "The virus enters the cell.", "second.png")]


def _image(path: str, height: int, width: int, seed: int) -> None:
  from PIL import Image

  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  rgb = np.stack([np.sin(6 * x + seed), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 90 + 128
  Image.fromarray(rgb.astype(np.uint8)).save(path)


def _sha(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _make_chain(tmp_path_factory, steps: int):
  if not os.path.exists(os.path.join(BENCH, "MWBenchRubrics.json")):
    pytest.skip(f"the MicroWorldBench rubrics are not in {BENCH}")
  root = tmp_path_factory.mktemp("real_path_wan2_2")
  paths = {v: str(root / v.lower()) for v in w22.VARIABLES}
  paths.update(BENCH=os.path.abspath(BENCH), IMAGE=str(root / "first.png"), PROMPTS=str(root / "prompts.jsonl"))
  real_path_models.save_wan22_ti2v_pipeline(paths["WAN22"])
  real_path_models.save_wan22_a14b_pipeline(paths["A14B"])
  real_path_models.write_manual_dir(paths["MANUAL"], size=64)
  os.makedirs(paths["OUT"])  # the docs' `mkdir -p $OUT`
  _image(paths["IMAGE"], 80, 100, seed=1)  # resized to cover 64x64 (80x64), centre-cropped
  with open(paths["PROMPTS"], "w", encoding="utf-8") as f:
    for row_id, caption, first in PROMPTS:
      f.write(json.dumps({"id": row_id, "caption": caption, "first_frame": first}) + "\n")
  _image(str(root / "second.png"), 64, 64, seed=2)
  chain = rp.Chain(paths, steps=steps, table=w22)
  chain.expert_sha = _sha(os.path.join(paths["A14B"], "transformer_2", "diffusion_pytorch_model.safetensors"))
  return chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  chain = _make_chain(tmp_path_factory, rp.TRAIN_STEPS)
  chain.start(*CHEAP)
  yield chain
  chain.close()


def _check_videos(path_of, names, frames: int, height: int, width: int) -> None:
  from microverse_jax import video

  for name in names:
    with open(path_of(name), "rb") as f:
      info = video.probe(f.read())
    assert (info.num_frames, info.height, info.width) == (frames, height, width), (name, info)


def _check_training(chain, name: str, run: str, steps: int, lora: bool) -> dict:
  out = chain.result(name).stdout
  workdir = os.path.join(chain.paths["RUNS"], run)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  assert rows[-1]["step"] == steps and all(math.isfinite(r["loss"]) for r in rows), rows
  saved = json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))
  assert (saved["model"]["lora_rank"] > 0) == lora
  assert f"loaded dit weights from converted Orbax checkpoint: {saved['init_from']}" in out, out
  return saved


def _our_model(workdir: str):
  """The run's trained DiT (LoRA on), computed in fp32."""
  import jax

  from microverse_jax import plans, saved_config, train_state

  c = saved_config.get_config(workdir)
  c.model.dtype = "float32"
  return train_state.load_dit(plans.resolve(c, jax.device_count()), workdir=workdir)


def _same_velocity(model, torch_model, latent_shape) -> None:
  """Our model and a diffusers WanTransformer3DModel give the same velocity on a random input (fp32)."""
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *latent_shape), dtype=np.float32)
  t = np.array([3.0, 871.5], np.float32)
  ctx = rng.standard_normal((2, 7, real_path_models.TEXT_DIM), dtype=np.float32)
  ours = np.asarray(model(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(ctx)).sample
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 4, 1).numpy(), atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# TI2V-5B
# ---------------------------------------------------------------------------------------------
def test_convert_and_encode_with_the_wan2_2_vae(chain):
  converts = (("convert_dit", "dit", "ti2v_5b"), ("convert_vae", "vae", "vae2.2"), ("convert_umt5", "umt5", "umt5"))
  for step, kind, name in converts:
    layout = "transformers" if kind == "umt5" else "diffusers"
    assert f"loaded {kind} weights from PyTorch checkpoint ({layout} layout)" in chain.result(step).stdout
    meta = json.load(open(os.path.join(chain.paths["CKPT"], name, "config.json"), encoding="utf-8"))
    assert meta["kind"] == kind, meta
  vae = json.load(open(os.path.join(chain.paths["CKPT"], "vae2.2", "config.json"), encoding="utf-8"))["config"]
  assert vae["patch_size"] == 2 and vae["is_residual"], vae  # the Wan2.2 VAE's structure
  chain.result("encode")
  from microverse_jax import input_pipeline

  cache = input_pipeline.load_source("microsim10k_latents", "train", chain.paths["CACHE"])
  assert len(cache) >= 4
  # 9 frames of 64x64 through the Wan2.2 VAE (4x temporal, 16x spatial): (1 + 8/4, 64/16, 64/16, 4)
  assert cache[0]["latents"].shape == (3, 4, 4, 4) and cache[0]["context"].shape[1] == real_path_models.TEXT_DIM


def test_train_lora_with_image_conditioning(chain):
  saved = _check_training(chain, "train_lora", "ti2v_lora", rp.TRAIN_STEPS, lora=True)
  assert saved["diffusion"]["image_conditioning"] == "ti2v" and saved["train"]["text_only_rate"] == 0.5
  assert saved["init_from"] == os.path.join(chain.paths["CKPT"], "ti2v_5b")
  assert "latents(2, 3, 4, 4, 4)" in chain.result("train_lora").stdout  # the cache's latents, the tiny size


def test_sample_text_and_image_to_video_from_the_workdir(chain):
  size = (w22.TINY["frames"], w22.TINY["height"], w22.TINY["width"])
  t2v = chain.result("sample_t2v").stdout
  assert f"loaded step {rp.TRAIN_STEPS} of {chain.paths['RUNS']}/ti2v_lora" in t2v and "seeded random" not in t2v
  _check_videos(lambda i: os.path.join(chain.paths["OUT"], "ti2v_lora", f"{i}.mp4"), TASKS, *size)
  image = chain.result("sample_image").stdout
  assert f"{chain.paths['IMAGE']}: 100x80 resized to 80x64, centre-cropped to 64x64" in image, image
  _check_videos(lambda _: os.path.join(chain.paths["OUT"], "ti2v_image.mp4"), [0], *size)
  chain.result("sample_prompts")
  _check_videos(lambda i: os.path.join(chain.paths["OUT"], "ti2v_prompts", f"{i}.mp4"), ["cell", "virus"], *size)


def test_export_loads_in_diffusers_with_our_velocity(chain):
  out = chain.result("export").stdout
  folder = os.path.join(chain.paths["OUT"], "ti2v_lora_diffusers")
  assert f"wrote {folder} (diffusers)" in out, out
  transformer = diffusers.WanTransformer3DModel.from_pretrained(folder).eval()
  _same_velocity(_our_model(os.path.join(chain.paths["RUNS"], "ti2v_lora")), transformer, (3, 4, 4, 4))
  pipe = diffusers.WanPipeline.from_pretrained(chain.paths["WAN22"], transformer=transformer)  # as the docs say
  assert pipe.config.expand_timesteps and pipe.transformer is transformer


# ---------------------------------------------------------------------------------------------
# T2V-A14B: one expert
# ---------------------------------------------------------------------------------------------
def test_train_the_low_noise_expert(chain):
  for name in ("convert_high", "convert_low"):
    assert "loaded dit weights from PyTorch checkpoint (diffusers layout)" in chain.result(name).stdout
  saved = _check_training(chain, "train_a14b", "a14b_low", rp.TRAIN_STEPS, lora=True)
  assert saved["train"]["expert"] == "low" and saved["diffusion"]["boundary_ratio"] == 0.875
  assert "loaded vae weights from PyTorch checkpoint (diffusers layout)" in chain.result("encode_a14b").stdout


def test_export_beside_its_partner_and_sample_both(chain):
  folder = os.path.join(chain.paths["OUT"], "a14b_low")
  out = chain.result("export_a14b").stdout
  assert f"wrote {folder}/transformer_2 (diffusers, the low-noise expert (timesteps < 875)" in out, out
  original = os.path.join(chain.paths["A14B"], "transformer_2", "diffusion_pytorch_model.safetensors")
  assert _sha(original) == chain.expert_sha  # the download is untouched; the partner is still its link
  assert os.path.islink(os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
  assert not os.path.islink(os.path.join(folder, "transformer_2", "diffusion_pytorch_model.safetensors"))
  sample = chain.result("sample_a14b").stdout
  assert f"loaded dit weights from PyTorch checkpoint (diffusers layout): {folder}/transformer_2" in sample, sample
  assert "two experts: transformer/ samples timesteps >= 875, transformer_2/ those below" in sample
  size = (w22.TINY["a14b_frames"], w22.TINY["a14b_height"], w22.TINY["a14b_width"])
  _check_videos(lambda i: os.path.join(chain.paths["OUT"], "a14b_low_videos", f"{i}.mp4"), TASKS, *size)
  pipe = diffusers.WanPipeline.from_pretrained(folder)  # diffusers takes the folder with the trained expert
  assert pipe.config.boundary_ratio == 0.875
  _same_velocity(_our_model(os.path.join(chain.paths["RUNS"], "a14b_low")), pipe.transformer_2.eval(), (5, 8, 8, 4))


def test_docs_show_the_commands_the_test_runs():
  with open(os.path.join(rp.REPO, "docs", "wan2_2.md"), encoding="utf-8") as f:
    docs = rp.normalized(f.read())
  for name in w22.COMMANDS:
    assert rp.normalized(w22.shown(name)) in docs, f"docs/wan2_2.md does not show {name}: {w22.shown(name)}"


# ---------------------------------------------------------------------------------------------
# Heavy: full fine-tuning from raw video (the Wan2.2 VAE in the step), more steps
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heavy_chain(tmp_path_factory):
  chain = _make_chain(tmp_path_factory, 4)
  chain.start(*HEAVY, *CHEAP)
  yield chain
  chain.close()


@pytest.mark.heavy
def test_heavy_full_from_video_and_every_sample(heavy_chain):
  chain = heavy_chain
  saved = _check_training(chain, "train_full_video", "ti2v_full", 4, lora=False)
  assert saved["diffusion"]["image_conditioning"] == "ti2v"
  assert "loaded vae weights from converted Orbax checkpoint" in chain.result("train_full_video").stdout
  chain.result("sample_full_video")
  size = (w22.TINY["frames"], w22.TINY["height"], w22.TINY["width"])
  _check_videos(lambda i: os.path.join(chain.paths["OUT"], "ti2v_full", f"{i}.mp4"), TASKS, *size)
  for name in ("train_lora", "train_a14b"):
    chain.result(name)
  for name in ("sample_t2v", "sample_image", "sample_prompts", "export", "sample_a14b"):
    chain.result(name)
