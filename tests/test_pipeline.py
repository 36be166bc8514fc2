"""pipeline: a tiny Pipeline around a DiT you hold (videos of the config's size, deterministic per seed, another
size on request), the settings it refuses naming each, conditioning images, folders it reads, and film strips."""

import json
import re

import numpy as np
import pytest
from flax import nnx
from train_helpers import tiny_config

from microverse_jax import files, pipeline, plans
from microverse_jax.models.wan_dit import WanDiT


@pytest.fixture(scope="module")
def pipe():
  c = tiny_config("", **{"sample.steps": 2, "sample.guidance": 3.0})
  return pipeline.Pipeline.build(c, WanDiT(plans.dit_config(c), rngs=nnx.Rngs(0)))


# ------------------------------------------------------------------------------ a tiny Pipeline
def test_a_pipeline_makes_uint8_videos_of_the_configs_size_the_same_for_the_same_seed(pipe):
  assert isinstance(pipe.plan, plans.Plan) and pipe.config is pipe.plan.c and pipe.model_2 is None
  first = pipe("a cell divides", seed=1)
  assert len(first) == 1 and first[0].shape == (5, 16, 16, 3) and first[0].dtype == np.uint8
  again = pipe(["a cell divides", "beads diffuse"], seed=1)  # prompt i gets noise i whatever the batch
  np.testing.assert_array_equal(again[0], first[0])
  assert not np.array_equal(again[1], first[0]) and not np.array_equal(pipe("a cell divides", seed=2)[0], first[0])
  other = pipe("a cell divides", num_frames=3, height=8, width=24, steps=1)
  assert other[0].shape == (3, 8, 24, 3)


def test_a_pipeline_refuses_bad_settings_and_an_image_for_a_text_to_video_model(pipe):
  with pytest.raises(ValueError, match="^steps=0: expected a whole number >= 1$"):
    pipe("a cell", steps=0)
  with pytest.raises(ValueError, match="^guidance=nan: expected a finite number$"):
    pipe("a cell", guidance=float("nan"))
  with pytest.raises(ValueError, match="a conditioning image was given, but the model is text-to-video only"):
    pipe("a cell", image=np.zeros((16, 16, 3), np.uint8))


def test_generate_takes_a_second_expert_only_with_its_boundary(pipe):
  args = (pipe.model, pipe.encoders, pipe.tokenizer, ["a cell"], pipe.plan.latent_shape)
  with pytest.raises(ValueError, match="model_2, boundary and guidance_2 are for two experts"):
    pipeline.generate(*args, steps=1, model_2=pipe.model)
  with pytest.raises(ValueError, match="model_2, boundary and guidance_2 are for two experts"):
    pipeline.generate(*args, steps=1, guidance_2=2.0)


# ------------------------------------------------------------------------------ settings
def test_config_settings_are_the_configs_sampling_keys():
  c = tiny_config("", **{"sample.sampler": "unipc", "diffusion.shift": 3.0, "sample.cfg_cache": True})
  assert pipeline.config_settings(c) == dict(
    steps=4,
    guidance=5.0,
    shift=3.0,
    sampler="unipc",
    negative_prompt="",
    prediction="x0",
    same_noise=False,
    tiled=True,
    step_cache=0.0,
    cfg_cache=True,
    image_conditioning="none",
  )


def test_check_settings_names_the_flag_given_or_the_config_key():
  c = tiny_config("")
  pipeline.check_settings({"steps": 1, "guidance": 1.0, "shift": 0.5, "step_cache": 0.0, "fps": 8}, c)
  with pytest.raises(ValueError, match="^--shift=0: expected a number > 0$"):
    pipeline.check_settings({"shift": 0}, c, prefix="--")
  with pytest.raises(ValueError, match="^--guidance_2=inf: expected a finite number$"):
    pipeline.check_settings({"guidance_2": float("inf")}, prefix="--")
  c.sample.fps = 0
  with pytest.raises(ValueError, match="^sample.fps=0: expected a number > 0$"):  # not given: the config's, named
    pipeline.check_settings({}, c)
  c.sample.fps, c.sample.step_cache = 8, -1.0
  with pytest.raises(ValueError, match=r"^sample.step_cache=-1.0: expected a number >= 0 \(0: off\)$"):
    pipeline.check_settings({}, c)


def test_check_conditioning_refuses_a_missing_or_an_unwanted_image():
  for mode, has_image in (("none", False), ("ti2v", False), ("ti2v", True), ("concat", True)):
    pipeline.check_conditioning(mode, has_image)
  with pytest.raises(ValueError, match="model is text-to-video only"):
    pipeline.check_conditioning("none", True)
  with pytest.raises(ValueError, match="diffusion.image_conditioning='concat': the model needs a conditioning image"):
    pipeline.check_conditioning("concat", False)


# ------------------------------------------------------------------------------ images and folders
def test_load_image_keeps_its_size_or_covers_and_centre_crops(tmp_path, capsys):
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 255  # a white centre band, 20 px wide
  np.testing.assert_array_equal(pipeline.load_image(image, 20, 40), image)
  assert capsys.readouterr().out == ""
  square = pipeline.load_image(image, 10, 10)  # scaled to 10 x 20, cropped to the middle 10 x 10: the band
  assert square.shape == (10, 10, 3) and square.min() > 200
  assert capsys.readouterr().out.strip() == "image: 40x20 resized to 20x10, centre-cropped to 10x10"
  from PIL import Image

  Image.fromarray(image).save(tmp_path / "frame.png")
  np.testing.assert_array_equal(pipeline.load_image(str(tmp_path / "frame.png"), 20, 40), image)
  with pytest.raises(ValueError, match=f"^{tmp_path / 'missing.png'}: not a readable image"):
    pipeline.load_image(str(tmp_path / "missing.png"), 20, 40)
  with pytest.raises(ValueError, match=r"^image: expected uint8 \(H, W, 3\), got float32 \(20, 40, 3\)"):
    pipeline.load_image(image.astype(np.float32), 20, 40)


def test_folder_conditioning_and_boundary_from_model_index(tmp_path):
  t2v = plans.dit_config(tiny_config(""))
  i2v = plans.dit_config(tiny_config("", **{"model.in_channels": 7}))
  assert pipeline.folder_conditioning(str(tmp_path), t2v) == "none" and pipeline.folder_boundary(str(tmp_path)) is None
  assert pipeline.folder_conditioning(str(tmp_path), i2v) == "concat"  # more channels in than out
  (tmp_path / "model_index.json").write_text(json.dumps({"expand_timesteps": True, "boundary_ratio": 0.875}))
  assert pipeline.folder_conditioning(str(tmp_path), i2v) == "ti2v"
  with pytest.raises(ValueError, match="a two-expert Wan2.2 A14B pipeline \\(boundary_ratio\\) without transformer_2/"):
    pipeline.folder_boundary(str(tmp_path))
  (tmp_path / "transformer_2").mkdir()
  assert pipeline.folder_boundary(str(tmp_path)) == 0.875


def test_pretrained_config_points_a_copy_at_the_checkpoint_and_refuses_a_run(tmp_path):
  c = tiny_config("")
  got = pipeline.pretrained_config(str(tmp_path / "dit"), c)
  assert got.init_from == str(tmp_path / "dit") and c.init_from == "" and got.model.num_layers == c.model.num_layers
  files.mark(tmp_path / "run", "run")
  with pytest.raises(ValueError, match=f"--checkpoint={tmp_path / 'run'}: a training run's workdir, not a checkpoint"):
    pipeline.pretrained_config(str(tmp_path / "run"), c)


def test_an_expert_exported_alone_is_not_taken_for_a_pipeline(tmp_path):
  """export of an A14B expert into a new folder writes FOLDER/transformer_2 only: sampling that folder says to export
  into a copy of the pipeline (it said "no checkpoint in this directory", or with --guidance_2 "only for a two-expert
  folder")."""
  (tmp_path / "transformer_2").mkdir()
  (tmp_path / "transformer_2" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
  message = f"{tmp_path}: holds transformer_2/ but no model_index.json, not a WanPipeline folder: export an expert "
  message = "^" + re.escape(message + "into a copy of its pipeline folder (cp -rs PIPELINE")
  for check in (pipeline.folder_boundary, lambda p: pipeline.pretrained_config(p, tiny_config(""))):
    with pytest.raises(ValueError, match=message):
      check(str(tmp_path))
  assert pipeline.folder_boundary(str(tmp_path / "transformer_2")) is None  # the transformer folder itself


def test_a_film_strip_is_evenly_spaced_frames_side_by_side():
  frames = np.arange(16, dtype=np.uint8)[:, None, None, None] * np.ones((16, 2, 3, 3), np.uint8)
  strip = pipeline.filmstrip(frames, count=4)
  assert strip.shape == (2, 12, 3)
  assert strip[0, ::3, 0].tolist() == [0, 5, 10, 15]  # the first, the last and evenly between
  assert pipeline.filmstrip(frames[:3]).shape == (2, 9, 3)  # fewer frames than count: all of them
