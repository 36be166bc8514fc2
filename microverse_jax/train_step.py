"""The training step: the flow-matching loss, caption dropout and the optimizer update.

One loss for every caller: the trainer's step (`make_train_step`), the held-out loss (evaluators.py),
the ahead-of-time compile (aot.py) and the step benchmark (bench/perf/train_step.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from microverse_jax import diffusion


def flow_matching_loss(
  fm: diffusion.FlowMatching, model, x_t, t, target, context, *, extra=None, first_frame=None, conditioned=None
) -> jax.Array:
  """Per-sample mean squared velocity error (B,) of `model` at noisy latents x_t (B, F', H', W', C), timesteps
  t (B,), velocity target like x_t, text states context (B, L, D) (`fm.noised` makes x_t, t, target).

  The first frame (diffusion.IMAGE_CONDITIONING): "concat" passes `extra` (B, F', H', W', E), channels concatenated
  to the input (`diffusion.concat_condition`). "ti2v" passes `first_frame` (B, 1, H', W', C), the clean latent
  frame 0, and `conditioned` (B,) bool: in those examples frame 0 is clean, its tokens get timestep 0 and the
  error is over frames 1.. ; the others are text to video (every frame noised, the error over all)."""
  x_in, steps, frames = x_t, t, None
  if extra is not None:
    x_in = jnp.concatenate([x_t, extra.astype(x_t.dtype)], axis=-1)
  if first_frame is not None:
    cond = conditioned.reshape(-1, 1, 1, 1, 1)
    x_t = x_t.at[:, :1].set(jnp.where(cond, first_frame.astype(x_t.dtype), x_t[:, :1]))
    x_in = x_t
    tokens = diffusion.first_frame_tokens(x_t.shape[1:], model.cfg.patch_size)
    steps = t[:, None] * jnp.where(conditioned[:, None], tokens, 1.0)
    frames = jnp.ones(x_t.shape[:2], jnp.float32).at[:, 0].set(jnp.where(conditioned, 0.0, 1.0))  # (B, F')
  v = fm.velocity(model(x_in, steps, context), x_t, t)
  if frames is None:
    return jnp.mean(jnp.square(v - target), axis=tuple(range(1, v.ndim)))
  per_frame = jnp.mean(jnp.square(v - target), axis=tuple(range(2, v.ndim)))  # (B, F')
  return jnp.sum(per_frame * frames, axis=1) / jnp.sum(frames, axis=1)


def make_train_step(plan, graphdef, tx, schedule):
  """step(state, frozen, encode, batch) -> (state, metrics); `encode(batch)` -> (latents, context, extra)
  (`make_encode`)."""
  c = plan.c
  fm = diffusion.FlowMatching.from_config(c.diffusion)
  accum, ema_decay = c.optim.grad_accum, c.optim.ema_decay
  skip_nonfinite = c.train.on_nonfinite == "skip"
  mode, text_only_rate = diffusion.image_conditioning(c.diffusion), c.train.text_only_rate
  lo, hi = fm.expert_indices(c.diffusion.boundary_ratio, c.train.expert)  # plans.resolve: a non-empty range

  def loss_fn(params, frozen, latents, context, extra, key):
    """The loss-weighted mean over the batch, at one grid timestep per sample (in train.expert's range); "ti2v":
    each example conditioned on its first frame with probability 1 - train.text_only_rate."""
    model = nnx.merge(graphdef, params, frozen)
    k_t, k_noise = jax.random.split(key)
    index = fm.sample_index(k_t, latents.shape[0], lo, hi)
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t, t, target, weight = fm.training_inputs(latents, noise, index)
    image = {"extra": extra}
    if mode == "ti2v":
      conditioned = jax.random.bernoulli(jax.random.fold_in(key, 2), 1.0 - text_only_rate, (latents.shape[0],))
      image = {"first_frame": latents[:, :1], "conditioned": conditioned}
    return jnp.mean(flow_matching_loss(fm, model, x_t, t, target, context, **image) * weight)

  def step(state, frozen, encode, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    if c.train.caption_dropout > 0:
      key, k_drop = jax.random.split(key)
      batch = drop_captions(batch, k_drop, c.train.caption_dropout)
    latents, context, extra = encode(batch)
    grad_fn = jax.value_and_grad(loss_fn)
    if accum == 1:
      loss, grads = grad_fn(state["params"], frozen, latents, context, extra, key)
    else:
      split = lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

      def micro(carry, xs):
        lat, ctx, ext, i = xs
        loss, g = grad_fn(state["params"], frozen, lat, ctx, ext, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (loss, g)), None

      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state["params"]))
      xs = jax.tree.map(split, (latents, context, extra)) + (jnp.arange(accum),)
      (loss, grads), _ = jax.lax.scan(micro, zeros, xs)
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {**state, "params": params, "opt_state": opt_state}
    if ema_decay > 0:
      new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    if skip_nonfinite:  # keep the old weights and optimizer state, count the skipped update
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      new["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
    new["step"] = state["step"] + 1
    return new, {
      "loss": loss,
      "grad_norm": grad_norm,
      "lr": schedule(state["step"]),
      "finite": finite,
      "skipped_updates": new["skipped"],
    }

  return step


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def drop_captions(batch: dict, key, rate: float) -> dict:
  """Replaces each caption by the empty prompt with probability `rate` (trains the unconditional
  model that classifier-free guidance needs). The empty prompt is eos alone (id 1, T5 convention),
  what both tokenizers make of "". text_ids int32 (B, L), text_mask bool (B, L)."""
  ids, mask = batch["text_ids"], batch["text_mask"]
  drop = jax.random.bernoulli(key, rate, (ids.shape[0], 1))
  first = jnp.arange(ids.shape[1]) == 0
  return {**batch, "text_ids": jnp.where(drop, first.astype(ids.dtype), ids), "text_mask": jnp.where(drop, first, mask)}


def jit_train_step(plan, states, encode):
  """The jitted step(state, frozen, encoder_state, batch) -> (state, metrics); state is donated.
  `states`: a `train_state.StateFactory` (graphdef, tx, schedule, state_shardings)."""
  step_fn = make_train_step(plan, states.graphdef, states.tx, states.schedule)
  return jax.jit(
    lambda s, f, e, b: step_fn(s, f, functools.partial(encode, e), b),
    donate_argnums=(0,),
    out_shardings=(states.state_shardings, None),
  )


def make_encode(plan, enc_graphdef):
  """encode(enc_state, batch) -> (latents (B, F', H', W', C) fp32, context (B, L, D), extra); frozen (no gradient).
  extra: "concat" models' input channels of the clip's first frame (`diffusion.concat_condition`), else None."""
  concat = diffusion.image_conditioning(plan.c.diffusion) == "concat"  # plans.resolve: data.source "video"

  def encode(enc_state, batch):
    if plan.c.data.source == "latents":
      return batch["latents"], batch["context"], None
    enc = nnx.merge(enc_graphdef, enc_state)
    latents = enc.encode(batch["video"])
    context = enc.text(batch["text_ids"], batch["text_mask"])
    extra = None
    if concat:
      image_latents = enc.encode_first_frame(batch["video"][:, :1], latents.shape[1])
      extra = jax.lax.stop_gradient(diffusion.concat_condition(image_latents, enc.temporal_factor))
    return jax.lax.stop_gradient(latents.astype(jnp.float32)), jax.lax.stop_gradient(context), extra

  return encode
