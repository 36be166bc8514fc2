"""The official MicroVerse recipe, selectable in configs/wan2_1.py (docs/recipe.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from microverse_jax import pipeline, plans, sharding, train_state
from microverse_jax.configs import base, microsim_tiny, wan2_1
from microverse_jax.models.layers import Dense

# MicroVerse train/inference.py, DEFAULT_NEGATIVE_PROMPT, verbatim.
OFFICIAL_NEGATIVE_PROMPT = (
  "Overexposed, static, blurry details, subtitles, watermark, "
  "worst quality, low quality, JPEG artifacts, ugly, deformed, "
  "extra fingers, poorly drawn hands, poorly drawn face, mutated, "
  "fused fingers, frozen frame, cluttered background"
)


def test_lora_init_is_peft():
  """PEFT: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0."""
  din, rank = 1536, 32
  with nnx.use_eager_sharding(False):
    layer = Dense(din, 64, ("embed", "mlp"), rngs=nnx.Rngs(0), lora_rank=rank, lora_alpha=32.0)
  a, b = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
  bound = 1 / np.sqrt(din)
  assert a.shape == (din, rank) and np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
  np.testing.assert_allclose(a.std(), bound / np.sqrt(3), rtol=0.02)  # uniform, not normal or he
  assert not b.any()


def test_official_variant_matches_the_scripts():
  for mode, lr, repeat, epochs in (("lora", 1e-4, 100, 5), ("full", 1e-5, 1, 2)):
    c = wan2_1.get_config(f"1.3b,{mode},official")
    assert (c.data.batch_size, c.optim.lr, plans.resolve(c, 1).peak_lr) == (2, lr, lr)
    assert (c.data.dataset_repeat, c.train.num_epochs, c.train.num_steps) == (repeat, epochs, 0)
    assert c.optim.param_dtype == "bfloat16" and c.sample.same_noise and c.sample.tiled_decode
    assert c.sample.negative_prompt == base.NEGATIVE_PROMPT == OFFICIAL_NEGATIVE_PROMPT
    assert (c.sample.guidance, c.sample.steps, c.diffusion.shift, c.sample.fps) == (5.0, 50, 5.0, 15)
    settings = pipeline.config_settings(c)
    assert settings["same_noise"] and settings["tiled"] and settings["negative_prompt"] == OFFICIAL_NEGATIVE_PROMPT
  default = wan2_1.get_config("1.3b,lora")
  assert default.optim.param_dtype == "float32" and not default.sample.same_noise
  # The learning-rate rule: lr is given at the official batch 2, scaled by sqrt(B / 2).
  assert default.data.batch_size == 8 and plans.resolve(default, 1).peak_lr == pytest.approx(2e-4)
  default.optim.lr_scaling = "linear"
  assert plans.resolve(default, 1).peak_lr == pytest.approx(4e-4)
  default.optim.lr_scaling = "none"
  assert plans.resolve(default, 1).peak_lr == pytest.approx(1e-4)
  # The base config's defaults (microsim_tiny keeps them): lr as given, fp32 master weights.
  tiny = microsim_tiny.get_config("test")
  assert plans.resolve(tiny, 1).peak_lr == tiny.optim.lr and tiny.optim.param_dtype == "float32"
  assert pipeline.config_settings(tiny)["same_noise"] is False


def test_steps_come_from_the_train_split_only():
  train_clips = 9121  # MicroSim-10K's 9,601 clips less the held-out 5% (480)
  lora, full = wan2_1.get_config("1.3b,lora,official"), wan2_1.get_config("14b,full,official")
  steps = lambda c, n: plans.resolve(c, 1).with_train_records(n).num_steps
  assert steps(lora, train_clips) == 5 * train_clips * 100 // 2 == 2_280_250
  assert steps(full, train_clips) == 2 * -(-train_clips // 2) == 9_122
  lora.train.num_steps = 7
  assert steps(lora, train_clips) == 7
  lora.train.update(num_steps=0, num_epochs=0)
  with pytest.raises(ValueError, match="train.num_epochs"):
    plans.resolve(lora, 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_param_dtype_sets_weights_and_adam_moments(dtype):
  c = microsim_tiny.get_config("test")
  c.optim.param_dtype = dtype
  plan = plans.resolve(c, jax.device_count())
  mesh = sharding.make_mesh(plan.mesh_shape)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(plan.rules):
    state, frozen = train_state.StateFactory(plan, mesh).abstract()
  floats = [
    x.dtype
    for x in jax.tree.leaves((state["params"], state["opt_state"], frozen))
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  assert floats and set(floats) == {jnp.dtype(dtype)}
  c.optim.param_dtype = "float16"
  with pytest.raises(ValueError, match="optim.param_dtype"):
    plans.resolve(c, jax.device_count())


def test_bad_frame_buckets_are_named():
  c = microsim_tiny.get_config("test")
  c.data.frame_buckets = (3,)
  with pytest.raises(ValueError, match="frame_buckets"):
    plans.resolve(c, jax.device_count())
