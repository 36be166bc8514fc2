"""The training step: its loss is the flow-matching loss at the sampled timesteps; caption dropout."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from microverse_jax import diffusion, input_pipeline, train_step


def step_config(expert: str = "", boundary_ratio: float = 0.0) -> ml_collections.ConfigDict:
  """The few config keys `train_step.make_train_step` reads: x0 prediction, uniform weighting, shift 5."""
  diffusion = dict(shift=5.0, prediction="x0", weighting="uniform", sigma_sampling="uniform")
  return ml_collections.ConfigDict(
    dict(
      diffusion=dict(diffusion, image_conditioning="none", boundary_ratio=boundary_ratio),
      optim=dict(grad_accum=1, ema_decay=0.0),
      train=dict(on_nonfinite="stop", caption_dropout=0.0, text_only_rate=0.0, expert=expert),
    )
  )


class ZeroX0(nnx.Module):
  """Predicts x0 = 0: its velocity error is x0 / sigma, its loss mean(x0^2) / max(sigma, 0.05)^2."""

  def __init__(self):
    self.w = nnx.Param(jnp.zeros(()))

  def __call__(self, x, t, context):
    return x * self.w[...]


def test_the_step_loss_is_the_flow_matching_loss_at_the_sampled_timesteps():
  c = step_config()
  graphdef, params, frozen = nnx.split(ZeroX0(), nnx.Param, ...)
  tx, schedule = optax.sgd(0.1), optax.constant_schedule(0.1)
  params = params.to_pure_dict()
  state = {"step": jnp.array(3), "rng": jax.random.key_data(jax.random.key(7)), "skipped": jnp.array(0)}
  state.update(params=params, opt_state=tx.init(params))
  latents = jnp.full((4, 1, 2, 2, 3), 0.5)
  step = train_step.make_train_step(types.SimpleNamespace(c=c), graphdef, tx, schedule)
  _, metrics = jax.jit(lambda s, b: step(s, frozen.to_pure_dict(), lambda x: (x, None, None), b))(state, latents)
  # the sampled timesteps: the step's key, split as the loss splits it
  key = jax.random.fold_in(jax.random.key(7), 3)
  index = diffusion.FlowMatching().sample_index(jax.random.split(key)[0], 4)
  sigma = np.maximum(diffusion.FlowMatching(shift=5.0).sigmas[np.asarray(index)], 0.05)
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(0.25 / sigma**2), rtol=1e-5)
  assert bool(metrics["finite"]) and int(metrics["skipped_updates"]) == 0


def test_caption_dropout_swaps_in_the_empty_prompt():
  tokenizer = input_pipeline.ByteTokenizer(12)
  ids, mask = tokenizer(["cells divide", "beads", "vessel", "rods"])
  batch = {"text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(mask), "video": jnp.zeros((4, 1))}
  empty_ids, empty_mask = tokenizer([""])
  kept = train_step.drop_captions(batch, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(kept["text_ids"], ids)
  dropped = train_step.drop_captions(batch, jax.random.key(0), 1.0)
  np.testing.assert_array_equal(dropped["text_ids"], np.repeat(empty_ids, 4, 0))
  np.testing.assert_array_equal(dropped["text_mask"], np.repeat(empty_mask, 4, 0))
  some = train_step.drop_captions(batch, jax.random.key(3), 0.5)
  rows = [bool((np.asarray(some["text_ids"][i]) == empty_ids[0]).all()) for i in range(4)]
  assert any(rows) and not all(rows)
  for i, empty in enumerate(rows):  # each row is either untouched or the empty prompt
    np.testing.assert_array_equal(some["text_ids"][i], empty_ids[0] if empty else ids[i])
