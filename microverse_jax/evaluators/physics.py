"""Physics-fidelity scores (`microworldbench physics`) of videos sampled for the first `num_clips` validation
clips (by clip id) of the procedural dataset, each scored against its own record.

  evals.physics = dict(kind="physics", every=2400, num_clips=16)   (data.name must be microsim_synth)
"""

from __future__ import annotations

from microverse_jax import pipeline
from microverse_jax.datasets.microsim_synth import render

SAMPLES = True


def check(c, name: str, settings) -> None:
  if c.data.name != "microsim_synth":  # its validation records are the ground truth the scores need
    raise ValueError(f"evals.{name} (kind physics) needs data.name='microsim_synth', not {c.data.name!r}")
  try:
    import microworldbench.physics  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ValueError(
      f"evals.{name} (kind physics) needs the scorer package: pip install -e ./bench (or --config.evals.{name}.every=0)"
    ) from None


def score_rows(plan, model, tokenizer, encoders, rows, *, seed: int, **settings) -> dict:
  """All `microworldbench physics` scores of videos sampled for prompt rows (their captions), each scored
  against its own row (process, params, size), with the config's sampling settings unless `settings`
  override them."""
  from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

  videos = pipeline.generate(
    model,
    encoders,
    tokenizer,
    [r["caption"] for r in rows],
    plan.latent_shape,
    seed=seed,
    **{**pipeline.config_settings(plan.c), **settings},
  )
  return score_videos(videos, rows)


class Evaluator:
  def __init__(self, settings, run):
    self.settings, self.run = settings, run

  def __call__(self, step: int, state, frozen) -> dict:
    run = self.run
    rows = render.stored_rows(run.c.data.data_dir, "validation")[: self.settings.num_clips]
    scores = score_rows(run.plan, run.model(state, frozen), run.tokenizer, run.encoders, rows, seed=run.c.train.seed)
    print("physics " + " ".join(f"{k[8:]}={v:.3g}" for k, v in scores.items() if k.count("/") == 1), flush=True)
    # per process means and pass rates, and every check's pass rate (e.g. physics/check/temporal/flicker)
    return {k: v for k, v in scores.items() if k.count("/") <= 2 or k.startswith("physics/check/")}
