"""plans: a config resolved once into a frozen Plan (architectures, latent shape, mesh, steps, peak learning
rate), and every check it makes naming the key at fault."""

import dataclasses
import math
import re

import pytest
from flax import nnx
from train_helpers import tiny_config

from microverse_jax import convert, plans
from microverse_jax.models.umt5 import UMT5Config
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig
from microverse_jax.models.wan_vae import WanVAEConfig


def _tiny(**overrides):
  return tiny_config("", **overrides)


# ------------------------------------------------------------------------------ what a plan resolves
def test_the_tiny_config_resolves_to_its_shapes_steps_and_mesh():
  c = _tiny()
  plan = plans.resolve(c, 1)
  assert plan.c is c and isinstance(plan.dit, WanDiTConfig) and plan.vae is None
  assert plan.latent_shape == (5, 16, 16, 3) and plan.frame_buckets == ()
  assert dict(plan.mesh_shape) == dict(data=1, fsdp=1, tensor=1, context=1) and plan.mesh_shape.num_slices == 1
  assert (plan.num_steps, plan.peak_lr) == (4, 1e-3)
  assert dict(plan.rules)["batch"] == ("data", "fsdp")
  # the offline byte tokenizer's vocabulary, at the DiT's text width
  assert (plan.text.vocab_size, plan.text.d_model) == (259, plan.dit.text_dim) == (259, 32)
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.num_steps = 7


def test_the_mesh_fills_the_devices_and_several_processes_keep_one_frame_bucket():
  c = _tiny(**{"mesh.data": -1, "mesh.tensor": 2})
  plan = plans.resolve(c, 4, num_processes=2)
  assert dict(plan.mesh_shape) == dict(data=2, fsdp=1, tensor=2, context=1)
  assert plan.frame_buckets == (5,)  # one bucket: every process must batch the same shapes
  sliced = plans.resolve(_tiny(**{"mesh.data": -1, "data.batch_size": 8}), 8, num_slices=2).mesh_shape
  assert sliced["data"] == 8 and sliced.dcn == dict(data=2, fsdp=1)


@pytest.mark.parametrize(
  "scaling, reference, want",
  [("none", 2, 1e-3), ("linear", 2, 2e-3), ("sqrt", 2, 1e-3 * math.sqrt(2)), ("linear", 8, 5e-4), ("sqrt", 16, 5e-4)],
)
def test_peak_lr_is_scaled_from_the_reference_batch(scaling, reference, want):
  c = _tiny(**{"optim.lr_scaling": scaling, "optim.reference_batch": reference})  # data.batch_size = 4
  assert plans.resolve(c, 1).peak_lr == pytest.approx(want, rel=1e-12)


def test_with_train_records_computes_the_steps_of_the_official_schedule():
  c = _tiny(**{"train.num_steps": 0, "train.num_epochs": 3, "data.dataset_repeat": 2})
  plan = plans.resolve(c, 1)
  assert plan.num_steps == 0
  assert plan.with_train_records(10).num_steps == 3 * 5  # 3 epochs x ceil(10 x 2 / 4)
  assert plan.with_train_records(11).num_steps == 3 * 6  # 22 / 4: the last partial batch counts
  assert plan.with_train_records(11).latent_shape == plan.latent_shape
  given = plans.resolve(_tiny(), 1)
  assert given.with_train_records(10_000) is given  # train.num_steps given: kept


# ------------------------------------------------------------------------------ latent shapes
def test_latent_shape_in_pixel_space_and_through_the_wan_vaes():
  c = _tiny(**{"data.num_frames": 17, "data.height": 32, "data.width": 48})
  assert plans.latent_shape(c, None) == (17, 32, 48, 3)
  assert plans.latent_shape(c, WanVAEConfig.preset("wan2.1")) == (5, 4, 6, 16)  # 1 + 16 / 4, / 8, 16 channels
  assert plans.latent_shape(c, WanVAEConfig.preset("wan2.2")) == (5, 2, 3, 48)  # / 16 spatially, 48 channels
  assert plans.latent_shape(c, WanVAEConfig.preset("wan2.1"), num_frames=81, height=480, width=832) == (21, 60, 104, 16)
  for frames, height, width in ((16, 32, 48), (17, 36, 48), (17, 32, 44)):
    with pytest.raises(ValueError, match=rf"frames/height/width = {frames}/{height}/{width}: .*1 \+ 4k"):
      plans.latent_shape(c, WanVAEConfig.preset("wan2.1"), frames, height, width)


def test_latent_shape_of_gives_another_video_size():
  plan = plans.resolve(_tiny(), 1)
  assert plan.latent_shape_of() == plan.latent_shape
  assert plan.latent_shape_of(num_frames=9) == (9, 16, 16, 3) and plan.latent_shape_of(height=24) == (5, 24, 16, 3)
  c = _tiny(
    **{"autoencoder.kind": "wan_vae", "autoencoder.preset": "tiny", "model.in_channels": 4, "model.out_channels": 4}
  )
  plan = plans.resolve(c, 1)  # the tiny VAE: 2x in time, 4x in space, 4 channels
  assert plan.vae == WanVAEConfig.preset("tiny") and plan.latent_shape == (3, 4, 4, 4)
  assert plan.latent_shape_of(num_frames=9, height=32, width=8) == (5, 8, 2, 4)


# ------------------------------------------------------------------------------ architectures
def test_architectures_come_from_the_config_without_checkpoints():
  c = _tiny(**{"model.patch_size": [1, 4, 4]})  # a list (as a saved config.json gives it) becomes a tuple
  cfg = plans.dit_config(c)
  assert cfg.patch_size == (1, 4, 4) and (cfg.num_layers, cfg.num_heads, cfg.head_dim) == (2, 2, 16)
  assert plans.vae_config(c) is None
  c.text.tokenizer = "/a/tokenizer/folder"  # not an offline tokenizer: the preset as it is (no files read)
  assert plans.text_config(c, cfg) == UMT5Config.preset("tiny")


def test_a_checkpoints_own_architecture_wins_over_the_config_but_not_its_run_fields(tmp_path):
  c = _tiny()
  convert.save_params(WanDiT(plans.dit_config(c), rngs=nnx.Rngs(0)), str(tmp_path / "dit"), "dit")
  c = _tiny(**{"init_from": str(tmp_path / "dit"), "model.num_layers": 7, "model.ffn_dim": 96, "model.lora_rank": 4})
  cfg = plans.dit_config(c)
  assert (cfg.num_layers, cfg.ffn_dim) == (2, 64)  # the checkpoint's
  assert (cfg.lora_rank, cfg.remat_policy) == (4, "dots_saveable")  # how to run it: the config's
  assert plans.resolve(c, 1).dit == cfg


# ------------------------------------------------------------------------------ errors name the key
@pytest.mark.parametrize(
  "key",
  [
    "autoencoder.kind",
    "data.source",
    "diffusion.prediction",
    "optim.schedule",
    "train.on_nonfinite",
    "optim.param_dtype",
    "optim.lr_scaling",
    "train.expert",
  ],
)
def test_a_bad_choice_is_refused_naming_its_key_and_the_choices(key):
  with pytest.raises(ValueError, match=rf"^{re.escape(key)}='bogus': expected one of \("):
    plans.resolve(_tiny(**{key: "bogus"}), 1)


@pytest.mark.parametrize(
  "overrides, num_devices, message",
  [
    ({"optim.reference_batch": 0}, 1, "optim.reference_batch=0: expected a batch >= 1"),
    ({"train.num_steps": 0, "train.num_epochs": 0}, 1, "train.num_steps=0: give it, or train.num_epochs > 0"),
    ({"mesh.data": -1}, 8, "data.batch_size=4 must split into optim.grad_accum=1 micro-batches divisible by the 8"),
    ({"optim.grad_accum": 3}, 1, "data.batch_size=4 must split into optim.grad_accum=3"),
    ({"mesh.data": 2, "optim.grad_accum": 4}, 2, "divisible by the 2 data shards"),
    ({"model.in_channels": 4}, 1, "model.in_channels=4, but the pixel autoencoder gives 3"),
    ({"mesh.data": 1, "mesh.tensor": 4}, 4, "model.num_heads=2 must divide by mesh.tensor and mesh.context"),
    ({"mesh.data": 1, "mesh.context": 4}, 4, "model.num_heads=2 must divide"),
    ({"data.source": "latents"}, 1, "train.caption_dropout needs data.source='video'"),
    ({"data.frame_buckets": (5, 7)}, 1, "data.frame_buckets=[5, 7]: [7] not 4k + 1"),
    ({"train.text_only_rate": 1.5}, 1, "train.text_only_rate=1.5: expected a fraction in [0, 1]"),
    ({"train.text_only_rate": 0.5}, 1, "train.text_only_rate=0.5 is read with diffusion.image_conditioning='ti2v'"),
    ({"diffusion.boundary_ratio": 1.0}, 1, "diffusion.boundary_ratio=1.0: expected 0"),
    ({"train.expert": "high"}, 1, "train.expert='high' needs diffusion.boundary_ratio > 0"),
    ({"train.expert": "low", "diffusion.boundary_ratio": 0.0005}, 1, "no timestep of the training grid"),
  ],
)
def test_a_config_that_cannot_run_is_refused_naming_the_key(overrides, num_devices, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    plans.resolve(_tiny(**overrides), num_devices)


def test_batch_size_must_divide_over_the_processes():
  with pytest.raises(ValueError, match="data.batch_size=4 is not divisible by 3 processes"):
    plans.resolve(_tiny(), 1, num_processes=3)


def test_concat_conditioning_needs_the_video_source():
  c = _tiny(**{"diffusion.image_conditioning": "concat", "model.in_channels": 7, "train.caption_dropout": 0.0})
  assert plans.resolve(c, 1).dit.in_channels == 7  # 3 + 1 mask channel + 3 image channels
  c.data.source = "latents"
  with pytest.raises(ValueError, match="data.source='latents' with diffusion.image_conditioning='concat'"):
    plans.resolve(c, 1)


@pytest.mark.parametrize("key", ["init_from", "text.init_from", "autoencoder.init_from"])
def test_a_missing_checkpoint_is_named_by_its_key(key, tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=f"^{re.escape(key)}={re.escape(missing)}: no such checkpoint"):
    plans.resolve(_tiny(**{key: missing}), 1)
