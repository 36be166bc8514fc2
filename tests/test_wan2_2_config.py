"""configs/wan2_2.py: the official Wan2.2 sizes, boundaries and conditioning; its runlocal variants train on CPU.
(I2V-A14B is checked here: its DiT takes 36 channels, not the autoencoder's 16, so test_configs.py's
generic check does not apply to it.)"""

import os

import pytest
from train_helpers import losses

from microverse_jax import plans, train
from microverse_jax.configs import wan2_2


def test_the_official_wan2_2_shapes_and_switches():
  five_b = wan2_2.get_config("ti2v_5b,lora")
  assert (five_b.model.num_heads * five_b.model.head_dim, five_b.model.num_layers, five_b.model.ffn_dim) == (
    3072,
    30,
    14336,
  )
  assert (five_b.data.num_frames, five_b.data.height, five_b.data.width, five_b.sample.fps) == (121, 704, 1280, 24)
  plan = plans.resolve(five_b, 8)
  assert plan.vae.z_dim == 48 and plan.latent_shape == (31, 44, 80, 48) and plan.dit.in_channels == 48
  assert (five_b.diffusion.image_conditioning, five_b.diffusion.boundary_ratio, five_b.train.expert) == ("ti2v", 0, "")
  high = wan2_2.get_config("t2v_a14b,full,expert=high")
  assert (high.model.num_heads * high.model.head_dim, high.model.num_layers, high.model.in_channels) == (5120, 40, 16)
  assert (high.diffusion.boundary_ratio, high.diffusion.shift, high.train.expert, high.sample.guidance) == (
    0.875,
    12.0,
    "high",
    4.0,
  )
  low = wan2_2.get_config("i2v_a14b,lora,expert=low")
  plan = plans.resolve(low, 8)
  assert (plan.dit.in_channels, plan.dit.out_channels, low.diffusion.image_conditioning) == (36, 16, "concat")
  assert (low.diffusion.boundary_ratio, low.train.expert, low.data.source, low.model.lora_rank) == (
    0.9,
    "low",
    "video",
    32,
  )


@pytest.mark.parametrize(
  "arg, message",
  [
    ("ti2v_5b,lora,expert=high", r"TI2V-5B is one model, no expert="),
    ("ti2v_5b,t2v_a14b", r"name one model"),
    ("ti2v_5b,expert=middle", r"unknown variants \['expert=middle'\]"),
  ],
)
def test_a_variant_that_names_no_model_or_a_wrong_expert_is_refused(arg, message):
  with pytest.raises(ValueError, match=message):
    wan2_2.get_config(arg)


@pytest.mark.parametrize("arg", ["ti2v_5b,lora,runlocal", "i2v_a14b,full,expert=low,runlocal"])
def test_runlocal_trains_on_cpu(arg, synth_data_dir, tmp_path):
  c = wan2_2.get_config(arg)
  c.data.data_dir = synth_data_dir
  c.train.num_steps = 2
  train.train(c, str(tmp_path))
  assert sorted(losses(str(tmp_path))) == [1, 2]


def test_the_a14b_pair_samples_with_both_scales_and_does_not_train(tmp_path):
  pair = wan2_2.get_config("t2v_a14b")
  assert (pair.train.expert, pair.sample.guidance, pair.sample.guidance_2) == ("", 4.0, 3.0)
  assert wan2_2.get_config("t2v_a14b,full,expert=low").sample.guidance_2 == 0  # one expert: sample.guidance
  with pytest.raises(ValueError, match=r"boundary_ratio=0.875 without train.expert: a two-expert pair samples"):
    train.train(wan2_2.get_config("t2v_a14b,lora,runlocal"), str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything is written
