"""What the trainer runs every N steps: the held-out loss, sample videos and physics scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from microverse_jax import diffusion, factory, pipeline, train_step


def make_eval_step(c, graphdef):
  """Held-out velocity loss (unweighted) at timestep t = `bucket` (sigma = t / 1000, high t = high noise)
  with fixed noise: comparable across runs, whatever their shift."""
  fm = diffusion.FlowMatching.from_config(c.diffusion)

  def eval_step(params, frozen, latents, context, valid, bucket, key):
    model = nnx.merge(graphdef, params, frozen)
    noise = jax.random.normal(key, latents.shape, jnp.float32)
    sigma = jnp.full((latents.shape[0],), bucket / diffusion.NUM_TRAIN_TIMESTEPS, jnp.float32)
    per = train_step.flow_matching_loss(fm, model, *fm.noised(latents, noise, sigma), context)
    return jnp.sum(per * valid), jnp.sum(valid)

  return jax.jit(eval_step)


def held_out_loss(c, tokenizer, eval_step, encode, state, frozen, enc_state, mesh, rules) -> dict:
  """Validation flow-matching loss at each timestep of `eval.buckets` as eval/loss_t<t>, and their mean
  (fixed noise, fixed batches)."""
  it = factory.load_batches(c, tokenizer, "validation", seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  sums = {b: [0.0, 0.0] for b in c.eval.buckets}
  for i, raw in zip(range(c.eval.num_batches), it):
    valid = (raw["index"] >= 0).astype(np.float32)
    batch = factory.to_global(raw, mesh, rules)
    latents, context = encode(enc_state, batch)
    valid = jax.make_array_from_process_local_data(factory.batch_sharding(mesh, rules), valid)
    for b in c.eval.buckets:
      key = jax.random.fold_in(jax.random.key(1234), i)
      s, n = eval_step(state["params"], frozen, latents, context, valid, b, key)
      sums[b][0] += float(s)
      sums[b][1] += float(n)
  out = {f"eval/loss_t{b}": s / max(n, 1) for b, (s, n) in sums.items()}
  out["eval/loss"] = float(np.mean(list(out.values())))
  return out


def sample_model(state, frozen, graphdef):
  """The DiT to sample: EMA weights when the run keeps them."""
  return nnx.merge(graphdef, state.get("ema", state["params"]), frozen)


def write_samples(c, workdir, step, model, tokenizer, encoders) -> list[np.ndarray]:
  """Samples the config's prompts to WORKDIR/samples/step_<N>/<i>.mp4 (+ PNG strips); returns them."""
  out_dir = epath.Path(workdir) / "samples" / f"step_{step}"
  videos = pipeline.generate(
    model,
    encoders,
    tokenizer,
    list(c.eval.prompts),
    factory.latent_shape(c),
    seed=c.train.seed,
    **pipeline.config_settings(c),
  )
  if jax.process_index() == 0:
    for i, v in enumerate(videos):
      pipeline.save_video(v, str(out_dir / f"{i}.mp4"), fps=c.eval.fps, strip=True)
    print(f"samples: {out_dir}", flush=True)
  return videos


def physics_scores(c, model, tokenizer, encoders) -> dict:
  """Physics-fidelity scores (microworldbench physics) of videos sampled for the first `eval.physics`
  validation clips (by clip id) of the procedural dataset in `data.data_dir`, each against its own record."""
  from microverse_jax.datasets.microsim_synth import render  # pylint: disable=g-import-not-at-top

  rows = render.stored_rows(c.data.data_dir, "validation")[: c.eval.physics]
  scores = score_rows(c, model, tokenizer, encoders, rows, seed=c.train.seed)
  # per process means and pass rates, and every check's pass rate (e.g. physics/check/temporal/flicker)
  return {k: v for k, v in scores.items() if k.count("/") <= 2 or k.startswith("physics/check/")}


def score_rows(c, model, tokenizer, encoders, rows, *, seed: int, **settings) -> dict:
  """All `microworldbench physics` scores of videos sampled for prompt rows (their captions), each scored
  against its own row (process, params, size), with the config's sampling settings unless `settings`
  override them."""
  from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

  videos = pipeline.generate(
    model,
    encoders,
    tokenizer,
    [r["caption"] for r in rows],
    factory.latent_shape(c),
    seed=seed,
    **{**pipeline.config_settings(c), **settings},
  )
  return score_videos(videos, rows)
