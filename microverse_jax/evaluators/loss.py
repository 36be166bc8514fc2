"""The held-out flow-matching loss: eval/loss_t<t> at each timestep t of `buckets`, and their mean eval/loss.

evals.loss = dict(kind="loss", every=1000, num_batches=4, buckets=(100, 300, 500, 700, 900))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax import batches, diffusion, train_step


def make_eval_step(d, graphdef):
  """Held-out velocity loss (unweighted) at timestep t = `bucket` (sigma = t / 1000, high t = high noise)
  with fixed noise: comparable across runs, whatever their shift. `d`: the config's diffusion section. A model
  that takes a first frame (d.image_conditioning) is given the clip's, as sampling gives it one."""
  fm, mode = diffusion.FlowMatching.from_config(d), diffusion.image_conditioning(d)

  def eval_step(params, frozen, latents, context, extra, valid, bucket, key):
    model = nnx.merge(graphdef, params, frozen)
    noise = jax.random.normal(key, latents.shape, jnp.float32)
    sigma = jnp.full((latents.shape[0],), bucket / diffusion.NUM_TRAIN_TIMESTEPS, jnp.float32)
    image = {"extra": extra}
    if mode == "ti2v":
      image = {"first_frame": latents[:, :1], "conditioned": jnp.ones(latents.shape[:1], bool)}
    per = train_step.flow_matching_loss(fm, model, *fm.noised(latents, noise, sigma), context, **image)
    return jnp.sum(per * valid), jnp.sum(valid)

  return jax.jit(eval_step)


class Evaluator:
  """The validation split's first `num_batches` batches, fixed noise per batch."""

  def __init__(self, settings, run):
    self.settings, self.run = settings, run
    self.eval_step = make_eval_step(run.c.diffusion, run.graphdef)

  def __call__(self, step: int, state, frozen) -> dict:
    run, buckets = self.run, tuple(self.settings.buckets)
    it = batches.load_batches(
      run.plan, run.tokenizer, "validation", seed=0, shuffle=False, num_epochs=1, drop_remainder=False
    )
    sums = {b: [0.0, 0.0] for b in buckets}
    for i, raw in zip(range(self.settings.num_batches), it):
      valid = (raw["index"] >= 0).astype(np.float32)
      batch = batches.to_global(raw, run.mesh, run.plan.rules)
      latents, context, extra = run.encode(run.enc_state, batch)
      valid = jax.make_array_from_process_local_data(batches.batch_sharding(run.mesh, run.plan.rules), valid)
      for b in buckets:
        key = jax.random.fold_in(jax.random.key(1234), i)
        s, n = self.eval_step(state["params"], frozen, latents, context, extra, valid, b, key)
        sums[b][0] += float(s)
        sums[b][1] += float(n)
    out = {f"eval/loss_t{b}": s / max(n, 1) for b, (s, n) in sums.items()}
    out["eval/loss"] = float(np.mean(list(out.values())))
    print("held-out " + " ".join(f"{k[5:]}={v:.4g}" for k, v in out.items()), flush=True)
    return out
