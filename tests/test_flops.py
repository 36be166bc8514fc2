"""flops: the DiT's analytic forward FLOPs (exact for the tiny config, and how they scale with the tokens and
the text), a training step's 3x, and the peak FLOP/s of a device."""

import types

import jax
import pytest

from microverse_jax import flops, plans
from microverse_jax.configs import microsim_tiny


@pytest.fixture(scope="module")
def cfg():
  return plans.dit_config(microsim_tiny.get_config("test"))  # width 32, FFN 64, 2 layers, patch (1, 4, 4)


def test_the_tiny_dits_forward_flops_by_hand(cfg):
  assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.patch_size, cfg.text_dim) == (32, 64, 2, (1, 4, 4), 32)
  t, e, text = 5 * 4 * 4, 32, 32  # latents (5, 16, 16) in patches of (1, 4, 4): 80 tokens
  layer = 4 * t * e * e + 2 * t * t * e + 2 * t * e * e + 2 * text * e * e + 2 * t * text * e + 2 * t * e * 64
  embed = t * 16 * (3 + 3) * e + text * (32 + e) * e
  assert layer == 1_458_176 and embed == 311_296
  assert flops.dit_forward_flops(cfg, (5, 16, 16), text) == 2 * (2 * layer + embed) == 6_455_296


def test_attention_is_quadratic_in_the_tokens_and_the_rest_linear(cfg):
  """f(t) = a t^2 + b t + c in the video tokens t: the second difference over t, 2t, 3t is 2 a t^2, with
  a = 2 x layers x 2 x width (QK^T and PV); frames and height alike only change t."""
  t = 80
  by_frames = [flops.dit_forward_flops(cfg, (5 * k, 16, 16), 32) for k in (1, 2, 3)]
  by_height = [flops.dit_forward_flops(cfg, (5, 16 * k, 16), 32) for k in (1, 2, 3)]
  assert by_frames == by_height
  a = 2 * cfg.num_layers * 2 * cfg.dim
  assert by_frames[2] - 2 * by_frames[1] + by_frames[0] == 2 * a * t * t
  # doubling the frames doubles the linear terms and quadruples attention: between 2x and 4x
  assert 2 * by_frames[0] < by_frames[1] < 4 * by_frames[0]


def test_the_text_adds_its_projections_and_cross_attention(cfg):
  e, t, layers = cfg.dim, 80, cfg.num_layers
  for text in (1, 32, 512):
    extra = flops.dit_forward_flops(cfg, (5, 16, 16), text) - flops.dit_forward_flops(cfg, (5, 16, 16), 0)
    assert extra == 2 * (layers * (2 * text * e * e + 2 * t * text * e) + text * (cfg.text_dim + e) * e)


def test_a_training_step_is_three_forwards_per_sample(cfg):
  forward = flops.dit_forward_flops(cfg, (5, 16, 16), 32)
  assert flops.train_step_flops(cfg, 1, (5, 16, 16), 32) == 3 * forward
  assert flops.train_step_flops(cfg, 8, (5, 16, 16), 32) == 24 * forward


def test_self_attention_dominates_wan_1_3b_at_480p():
  """Wan2.1 T2V-1.3B on 81 x 480 x 832 (latents 21 x 60 x 104, patches 1 x 2 x 2: 32760 tokens): QK^T and PV
  over the video tokens are most of a forward, which is why MFU at 480p is an attention kernel's."""
  from microverse_jax.configs import wan2_1

  cfg = plans.dit_config(wan2_1.get_config("1.3b,full,480p"))
  total = flops.dit_forward_flops(cfg, (21, 60, 104), 512)
  attention = 2 * cfg.num_layers * 2 * 32760**2 * cfg.dim
  assert 0.6 < attention / total < 0.8


def test_peak_flops_of_this_cpu_is_unknown_and_of_gpus_by_name():
  assert flops.peak_flops(jax.devices()[0]) is None
  assert flops.peak_flops(types.SimpleNamespace(device_kind="NVIDIA H200")) == 989e12
  assert flops.peak_flops(types.SimpleNamespace(device_kind="NVIDIA A100-SXM4-80GB")) is None
  assert flops.peak_flops(object()) is None  # no device_kind at all
