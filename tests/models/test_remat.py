"""The remat menu (model.remat_policy): every policy gives the loss and gradients of "none" (CPU, tiny DiT)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from microverse_jax.models.wan_dit import REMAT_POLICIES, WanDiT, WanDiTConfig


def _loss_and_grads(policy: str):
  model = WanDiT(dataclasses.replace(WanDiTConfig.preset("tiny"), remat_policy=policy), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 6, 4))
  ctx = jax.random.normal(jax.random.key(2), (2, 5, 32))
  target = jax.random.normal(jax.random.key(3), x.shape)

  @nnx.jit
  def step(m):
    return nnx.value_and_grad(lambda m: jnp.mean((m(x, jnp.array([10.0, 900.0]), ctx) - target) ** 2))(m)

  loss, grads = step(model)
  return float(loss), {str(p): np.asarray(g[...]) for p, g in nnx.to_flat_state(grads)}


def test_every_policy_gives_the_loss_and_gradients_of_none():
  """The offload policy runs on CPU too (XLA:CPU keeps the 'host' copies in the same memory)."""
  loss, grads = _loss_and_grads("none")
  for policy in REMAT_POLICIES:
    l, g = _loss_and_grads(policy)
    np.testing.assert_allclose(l, loss, rtol=1e-6, err_msg=policy)
    assert g.keys() == grads.keys()
    for path, want in grads.items():
      np.testing.assert_allclose(g[path], want, rtol=1e-4, atol=1e-6, err_msg=f"{policy}: {path}")


def test_a_bad_policy_names_the_key_and_the_menu():
  with pytest.raises(ValueError, match=r"model.remat_policy='dots'.*none, dots_saveable.*offload_block_outputs"):
    WanDiT(dataclasses.replace(WanDiTConfig.preset("tiny"), remat_policy="dots"), rngs=nnx.Rngs(0))
