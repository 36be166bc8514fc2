"""Flow-matching schedule facts and samplers against the exact flow of Gaussian data."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from microverse_jax import diffusion


def test_training_grid_matches_the_recipe():
  fm = diffusion.FlowMatching(shift=5.0)
  sig = np.linspace(1, 0, 1001)[:-1]
  np.testing.assert_allclose(fm.sigmas, 5 * sig / (1 + 4 * sig), rtol=1e-6)
  assert fm.sigmas[0] == 1.0 and fm.sigmas.shape == (1000,)
  np.testing.assert_allclose(fm.timesteps, 1000 * fm.sigmas, rtol=1e-6)
  w = fm.loss_weights
  assert abs(w.mean() - 1) < 1e-5 and w.min() == 0.0
  assert np.argmax(w) == np.argmin(np.abs(fm.timesteps - 500))


def test_uniform_weighting_weighs_every_noise_level_and_bad_names_are_refused():
  c = ml_collections.ConfigDict(dict(shift=1.0, prediction="x0", weighting="uniform", sigma_sampling="uniform"))
  fm = diffusion.FlowMatching.from_config(c)
  assert fm.prediction == "x0" and np.all(fm.loss_weights == 1.0)
  assert diffusion.FlowMatching(shift=5.0).loss_weights[0] == 0.0  # the recipe's bump: nothing at sigma = 1
  with pytest.raises(ValueError, match="diffusion.weighting='lognormal'"):
    diffusion.FlowMatching(weighting="lognormal")
  with pytest.raises(ValueError, match="diffusion.sigma_sampling='lognormal'"):
    diffusion.FlowMatching(sigma_sampling="lognormal")


@pytest.mark.parametrize("weighting", ["snr+1", "min_snr", "edm"])
def test_objectives_weigh_the_x0_error_as_their_papers_say(weighting):
  """The velocity loss weight is the x0-space weight times sigma^2 (velocity error = x0 error / sigma)."""
  fm = diffusion.FlowMatching(shift=3.0, weighting=weighting)
  s = fm.sigmas.astype(np.float64)[1:]  # sigma 1 (pure noise) has SNR 0
  snr = ((1 - s) / s) ** 2
  edm_sigma = s / (1 - s)
  want = {
    "snr+1": snr + 1,
    "min_snr": np.minimum(snr, 5.0),
    "edm": (edm_sigma**2 + 0.25) / (edm_sigma**2 * 0.25),
  }[weighting]
  np.testing.assert_allclose(fm.loss_weights[1:], want * s**2, rtol=1e-5)
  high, low = fm.loss_weights[np.argmin(np.abs(fm.sigmas - 0.9))], fm.loss_weights[np.argmin(np.abs(fm.sigmas - 0.1))]
  if weighting != "min_snr":  # SNR + 1 and EDM keep high noise; min-SNR caps low noise and fades high noise
    assert high > 0.5 * low


def test_logit_normal_sampling_draws_mid_noise_most():
  fm = diffusion.FlowMatching(shift=1.0, sigma_sampling="logit_normal")
  sigma = fm.sigmas[np.asarray(fm.sample_index(jax.random.key(0), 200_000))]
  # sigma = sigmoid(z), z ~ N(0, 1): median 0.5, 5th / 95th percentiles sigmoid(-/+1.645)
  np.testing.assert_allclose(np.percentile(sigma, [5, 50, 95]), [0.162, 0.5, 0.838], atol=0.005)
  shifted = diffusion.FlowMatching(shift=5.0, sigma_sampling="logit_normal")
  assert np.median(shifted.sigmas[np.asarray(shifted.sample_index(jax.random.key(0), 10_000))]) > 0.8  # shifted up


def test_training_inputs_interpolate_and_target_velocity():
  fm = diffusion.FlowMatching()
  x0, noise = jnp.ones((2, 3)), jnp.full((2, 3), 3.0)
  x_t, t, target, w = fm.training_inputs(x0, noise, jnp.array([0, 999]))
  s = fm.sigmas[[0, 999]]
  np.testing.assert_allclose(x_t[:, 0], (1 - s) * 1 + s * 3, rtol=1e-6)
  np.testing.assert_allclose(t, 1000 * s, rtol=1e-6)
  np.testing.assert_allclose(target, 2.0)
  np.testing.assert_allclose(w, fm.loss_weights[[0, 999]])


MU, STD = 2.0, 0.5


def exact_velocity(x, t):
  """E[noise - x0 | x_sigma] for x0 ~ N(MU, STD^2), noise ~ N(0, 1)."""
  s = (t / 1000.0)[:, None]
  var = (1 - s) ** 2 * STD**2 + s**2
  centred = x - (1 - s) * MU
  e_x0 = MU + (1 - s) * STD**2 / var * centred
  e_noise = s / var * centred
  return e_noise - e_x0


def endpoint_error(sampler, steps, shift=1.0):
  noise = jax.random.normal(jax.random.key(0), (256, 1))
  x0 = diffusion.sample(exact_velocity, noise, steps, shift=shift, sampler=sampler)
  return float(jnp.abs(x0 - (MU + STD * noise)).max())  # the exact flow maps noise e to MU + STD e


@pytest.mark.parametrize(
  "sampler,steps,shift,tol", [("euler", 100, 1.0, 0.03), ("unipc", 20, 1.0, 0.02), ("unipc", 50, 5.0, 0.01)]
)
def test_samplers_reach_the_exact_endpoint(sampler, steps, shift, tol):
  assert endpoint_error(sampler, steps, shift) < tol


def test_unipc_needs_fewer_steps_than_euler():
  assert endpoint_error("unipc", 10) < endpoint_error("euler", 50)
  assert endpoint_error("unipc", 50, shift=5.0) < endpoint_error("euler", 100, shift=5.0)


def test_guidance_combines_cond_and_uncond():
  fn = diffusion.guided(lambda x, t: jnp.concatenate([jnp.ones_like(x[:1]), jnp.zeros_like(x[:1])]), 5.0)
  np.testing.assert_allclose(fn(jnp.zeros((1, 2)), jnp.zeros((1,))), 5.0)


def exact_x0(x, t):
  """E[x0 | x_sigma] for the same Gaussian data: what an x0-predicting model outputs."""
  s = (t / 1000.0)[:, None]
  var = (1 - s) ** 2 * STD**2 + s**2
  return MU + (1 - s) * STD**2 / var * (x - (1 - s) * MU)


def test_x0_prediction_is_the_same_flow_as_velocity_prediction():
  x = jax.random.normal(jax.random.key(1), (64, 1)) * 2
  t = jnp.linspace(20.0, 1000.0, 64)
  v = diffusion.to_velocity(exact_x0(x, t), x, t / 1000, "x0")
  np.testing.assert_allclose(v, exact_velocity(x, t), rtol=1e-4, atol=1e-4)
  assert diffusion.to_velocity(x, x, t / 1000, "velocity") is x
  noise = jax.random.normal(jax.random.key(0), (256, 1))
  via_v = diffusion.sample(exact_velocity, noise, 20, sampler="unipc")
  via_x0 = diffusion.sample(
    lambda x, t: diffusion.to_velocity(exact_x0(x, t), x, t / 1000, "x0"), noise, 20, sampler="unipc"
  )
  np.testing.assert_allclose(via_x0, via_v, atol=1e-5)


def test_x0_prediction_clips_the_denominator_for_training():
  x, out = jnp.ones((2, 3)), jnp.zeros((2, 3))
  v = diffusion.to_velocity(out, x, jnp.array([0.01, 0.5]), "x0", min_sigma=0.05)
  np.testing.assert_allclose(v[:, 0], [20.0, 2.0], rtol=1e-6)
  with pytest.raises(ValueError, match="prediction='eps'"):
    diffusion.to_velocity(out, x, jnp.array([0.5, 0.5]), "eps")


def _ode(x, t):
  """A smooth velocity field: the flow towards 0.3 * sin(x)."""
  return x - 0.3 * jnp.sin(x)


def test_step_cache_off_is_the_plain_sampler_and_on_skips_calls_staying_close():
  noise = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 3))
  plain_stats, off_stats, on_stats = {}, {}, {}
  plain = diffusion.sample(_ode, noise, 30, shift=3.0, stats=plain_stats)
  off = diffusion.sample(_ode, noise, 30, shift=3.0, step_cache=0.0, stats=off_stats)
  np.testing.assert_array_equal(plain, off)
  assert plain_stats["model_calls"] == off_stats["model_calls"] == 30
  on = diffusion.sample(_ode, noise, 30, shift=3.0, step_cache=0.05, stats=on_stats)
  assert 2 <= on_stats["model_calls"] < 30
  assert float(jnp.abs(on - plain).max()) < 0.1 * float(jnp.abs(plain).max())


def test_cfg_cache_reuses_the_guidance_term_every_other_call():
  calls = {"both": 0, "cond": 0}

  def both(x2, t2):
    calls["both"] += 1
    x, _ = jnp.split(x2, 2)
    return jnp.concatenate([x + 1.0, x])  # v_cond - v_uncond = 1 everywhere

  def cond_only(x, t):
    calls["cond"] += 1
    return x + 1.0

  cached = diffusion.guided(both, 4.0, cond_only=cond_only)
  full = diffusion.guided(both, 4.0)
  x, t = jnp.ones((2, 3)), jnp.zeros((2,))
  for _ in range(4):
    np.testing.assert_allclose(cached(x, t), full(x, t))
  assert calls == {"both": 6, "cond": 2}  # cached: 2 full + 2 cond-only; full: 4
