"""Training with a first frame (issue 27): Wan2.2 TI2V ("ti2v": frame 0 clean, timestep 0 on its tokens, the loss
over frames 1..) and I2V-A14B style ("concat": a frame mask and the image latents on the input channels)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from train_helpers import losses, tiny_config

from microverse_jax import (
  diffusion,
  encode,
  encoders as encoders_lib,
  input_pipeline,
  pipeline,
  plans,
  sharding,
  train,
  train_step,
)
from microverse_jax.configs import microsim_tiny
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig
from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig

B, SHAPE = 2, (3, 16, 16, 3)  # latents (F', H', W', C) of the tiny pixel-space config: 3 frames at 16x16
SEED, STEP = 7, 3


@pytest.mark.parametrize("preset", ["tiny", "tiny-wan2.2"])
def test_the_causal_vae_encodes_latent_frame_0_from_video_frame_0_alone(preset):
  """What "ti2v" training from a latent cache relies on: the cache's latent frame 0 is the image's latent."""
  vae = WanVAE(WanVAEConfig.preset(preset), rngs=nnx.Rngs(0))
  video = jax.random.uniform(jax.random.key(1), (1, 9, 32, 32, 3), minval=-1.0, maxval=1.0)
  clip = nnx.jit(lambda m, v: m.encode(v))(vae, video)
  first = nnx.jit(lambda m, v: m.encode(v))(vae, video[:, :1])
  assert clip.shape[1] == 1 + 8 // vae.cfg.temporal_factor and first.shape[1] == 1
  np.testing.assert_allclose(np.asarray(first[:, 0]), np.asarray(clip[:, 0]), atol=1e-5, rtol=1e-5)


def _config(mode="ti2v", **train):
  c = microsim_tiny.get_config("test")
  c.diffusion.image_conditioning = mode
  c.model.in_channels = diffusion.model_in_channels(mode, 3, 1)
  c.train.update(caption_dropout=0.0, **train)
  c.optim.update(grad_clip=0.0, ema_decay=0.0)
  return c


def _model(c):
  cfg = WanDiTConfig(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in c.model.to_dict().items()})
  return WanDiT(cfg, rngs=nnx.Rngs(0))


def _inputs():
  latents = jax.random.normal(jax.random.key(2), (B, *SHAPE))
  context = jax.random.normal(jax.random.key(3), (B, 8, 32))
  return latents, context


def _step_loss(c, model, extra=None) -> float:
  """The trainer step's loss at step STEP of seed SEED (SGD, so the params are only read)."""
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  tx, schedule = optax.sgd(0.0), optax.constant_schedule(0.0)
  params = params.to_pure_dict()
  state = {"step": jnp.array(STEP), "rng": jax.random.key_data(jax.random.key(SEED)), "skipped": jnp.array(0)}
  state.update(params=params, opt_state=tx.init(params))
  step = train_step.make_train_step(types.SimpleNamespace(c=c), graphdef, tx, schedule)
  encode_fn = lambda b: (b[0], b[1], extra)
  _, metrics = jax.jit(lambda s, b: step(s, frozen.to_pure_dict(), encode_fn, b))(state, _inputs())
  return float(metrics["loss"])


def _reference_noised(fm, latents):
  """The step's sampled grid index and noise, split from its key as the step splits it."""
  key = jax.random.fold_in(jax.random.key(SEED), STEP)
  k_t, k_noise = jax.random.split(key)
  index = np.asarray(fm.sample_index(k_t, B))
  noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
  sigma = jnp.asarray(fm.sigmas[index]).reshape(B, 1, 1, 1, 1)
  return index, noise, sigma, (1 - sigma) * latents + sigma * noise


def test_the_ti2v_loss_is_the_loss_over_frames_after_a_clean_frame_0_at_timestep_0():
  c = _config("ti2v")
  model = _model(c)
  fm = diffusion.FlowMatching.from_config(c.diffusion)
  latents, context = _inputs()
  index, noise, sigma, x_t = _reference_noised(fm, latents)
  x_t = x_t.at[:, 0].set(latents[:, 0])  # frame 0 clean
  t = jnp.asarray(fm.timesteps[index])
  tokens_per_frame = (SHAPE[1] // 4) * (SHAPE[2] // 4)  # patch (1, 4, 4)
  steps = jnp.concatenate([jnp.zeros((B, tokens_per_frame)), jnp.repeat(t[:, None], 2 * tokens_per_frame, 1)], 1)
  out = model(x_t, steps, context)
  v = (x_t - out) / jnp.maximum(sigma, 0.05)  # prediction "x0"
  per = jnp.mean(jnp.square(v - (noise - latents))[:, 1:], axis=(1, 2, 3, 4))
  expected = float(jnp.mean(per * fm.loss_weights[index]))
  assert _step_loss(c, model) == pytest.approx(expected, rel=1e-5)


class _Frame0Offset(nnx.Module):
  """The DiT with a trainable offset added to its output's frame 0 only."""

  def __init__(self, dit):
    self.dit, self.cfg, self.offset = dit, dit.cfg, nnx.Param(jnp.zeros(()))

  def __call__(self, x, t, context):
    return self.dit(x, t, context).at[:, 0].add(self.offset[...])


def test_no_gradient_flows_from_frame_0s_error_of_a_conditioned_example():
  c = _config("ti2v")
  fm = diffusion.FlowMatching.from_config(c.diffusion)
  model = _Frame0Offset(_model(c))
  latents, context = _inputs()
  x_t, t, target = fm.noised(latents, jax.random.normal(jax.random.key(4), latents.shape), jnp.array([0.3, 0.8]))

  def grad_offset(conditioned):
    def loss(m):
      kw = dict(first_frame=latents[:, :1], conditioned=conditioned)
      return jnp.mean(train_step.flow_matching_loss(fm, m, x_t, t, target, context, **kw))

    return float(nnx.grad(loss)(model)["offset"][...])

  assert grad_offset(jnp.array([True, True])) == 0.0
  assert grad_offset(jnp.array([False, True])) != 0.0  # a text-only example's frame 0 is trained


def test_text_only_rate_1_gives_exactly_the_text_to_video_loss():
  model = _model(_config("ti2v"))
  ti2v = _step_loss(_config("ti2v", text_only_rate=1.0), model)
  t2v = _step_loss(_config("none"), model)
  assert ti2v == pytest.approx(t2v, rel=1e-6)
  assert _step_loss(_config("ti2v", text_only_rate=0.0), model) != pytest.approx(t2v, rel=1e-3)


def test_the_concat_loss_sees_the_frame_mask_and_the_first_frame_followed_by_blank_frames():
  c = _config("concat")
  model = _model(c)
  fm = diffusion.FlowMatching.from_config(c.diffusion)
  latents, context = _inputs()
  # what train_step.make_encode gives a "concat" model in pixel space (temporal factor 1): mask, frame 0, blanks
  image = jnp.zeros_like(latents).at[:, 0].set(latents[:, 0])
  mask = jnp.zeros((*latents.shape[:-1], 1)).at[:, 0].set(1.0)
  index, noise, sigma, x_t = _reference_noised(fm, latents)
  out = model(jnp.concatenate([x_t, mask, image], -1), jnp.asarray(fm.timesteps[index]), context)
  v = (x_t - out) / jnp.maximum(sigma, 0.05)
  per = jnp.mean(jnp.square(v - (noise - latents)), axis=(1, 2, 3, 4))  # every frame
  expected = float(jnp.mean(per * fm.loss_weights[index]))
  plan = plans.resolve(c, 1)
  tokenizer, encoders = encoders_lib.build_encoders(plan, sharding.make_mesh(plan.mesh_shape))
  ids, text_mask = tokenizer(["a cell", "two cells"])
  enc_graphdef, enc_state = nnx.split(encoders)
  batch = {"video": latents, "text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(text_mask)}
  _, _, extra = jax.jit(train_step.make_encode(plan, enc_graphdef))(enc_state, batch)
  np.testing.assert_array_equal(extra, jnp.concatenate([mask, image], -1))
  assert _step_loss(c, model, extra) == pytest.approx(expected, rel=1e-5)


def test_a_ti2v_run_trains_and_samples_from_its_workdir_with_an_image(synth_data_dir, tmp_path):
  c = tiny_config(
    synth_data_dir,
    **{"diffusion.image_conditioning": "ti2v", "train.text_only_rate": 0.5, "train.num_steps": 3},
  )
  train.train(c, str(tmp_path))
  assert sorted(losses(str(tmp_path))) == [1, 2, 3] and all(np.isfinite(list(losses(str(tmp_path)).values())))
  pipe = pipeline.Pipeline.from_workdir(str(tmp_path))
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  (video,) = pipe(["A round cell divides."], image=image, steps=2, guidance=1.0)
  assert video.shape == (5, 16, 16, 3)
  assert np.abs(video[0].astype(int) - image).max() <= 1  # pixel space: frame 0 is the image, held
  (t2v,) = pipe(["A round cell divides."], steps=2, guidance=1.0)  # one model does both
  assert t2v.shape == video.shape


def test_a_ti2v_run_trains_from_a_latent_cache(synth_data_dir, tmp_path):
  cache = str(tmp_path / "cache")
  encode.encode_split(
    input_pipeline.load_source("microsim_synth", "train", synth_data_dir),
    cache,
    dataset="microsim_synth",
    split="train",
    video_encoder=lambda video: video,
    text_encoder=lambda ids, mask: np.where(mask[..., None], ids[..., None] / 256.0, 0.0) * np.ones(32),
    tokenizer=input_pipeline.ByteTokenizer(16),
    num_frames=5,
    height=16,
    width=16,
    batch_size=4,
    shard_size=16,
    process_index=0,
    process_count=1,
  )
  overrides = {"data.name": "microsim_synth_latents", "data.source": "latents", "text.max_length": 16}
  overrides.update({"diffusion.image_conditioning": "ti2v", "train.caption_dropout": 0.0, "train.num_steps": 2})
  train.train(tiny_config(cache, **overrides), str(tmp_path / "wd"))
  assert sorted(losses(str(tmp_path / "wd"))) == [1, 2]


def test_a_concat_run_trains_three_steps(synth_data_dir, tmp_path):
  overrides = {"diffusion.image_conditioning": "concat", "model.in_channels": 7, "train.num_steps": 3}
  train.train(tiny_config(synth_data_dir, **overrides), str(tmp_path))
  assert sorted(losses(str(tmp_path))) == [1, 2, 3] and all(np.isfinite(list(losses(str(tmp_path)).values())))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"data.source": "latents"}, r"data.source='latents' with diffusion.image_conditioning='concat'"),
    ({"train.text_only_rate": 0.5}, r"train.text_only_rate=0.5 is read with diffusion.image_conditioning='ti2v'"),
  ],
)
def test_what_image_training_cannot_do_is_refused_naming_the_keys(overrides, message):
  c = tiny_config("/nonexistent", **{"diffusion.image_conditioning": "concat", "model.in_channels": 7, **overrides})
  with pytest.raises(ValueError, match=message):
    plans.resolve(c, 1)
