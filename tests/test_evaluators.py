"""The trainer's evaluators measure what their names say."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from microverse_jax import evaluators


class _ZeroX0(nnx.Module):
  """Predicts x0 = 0: its velocity error is x0 / sigma, so its loss at timestep t is mean(x0^2) (1000 / t)^2."""

  def __init__(self):
    self.w = nnx.Param(jnp.zeros(()))

  def __call__(self, x, t, context):
    return x * self.w[...]


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_held_out_loss_t_b_is_the_loss_at_timestep_b(shift):
  c = ml_collections.ConfigDict(dict(diffusion=dict(shift=shift, prediction="x0", weighting="wan")))
  graphdef, params, frozen = nnx.split(_ZeroX0(), nnx.Param, ...)
  step = evaluators.make_eval_step(c, graphdef)
  latents = jnp.full((2, 1, 4, 4, 3), 0.5)
  for t in (100, 300, 500, 700, 900):
    s, n = step(params, frozen, latents, None, jnp.ones(2), t, jax.random.key(0))
    # high t = high noise = small error: loss_t900 is the high-noise loss, loss_t100 the low-noise one
    np.testing.assert_allclose(float(s / n), 0.25 * (1000 / t) ** 2, rtol=1e-4)
