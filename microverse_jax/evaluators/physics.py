"""Physics-fidelity scores (`microworldbench physics`) of videos sampled for the first `num_clips` validation
clips (by clip id) of the procedural dataset, each scored against its own record.

  evals.physics = dict(kind="physics", every=2400, num_clips=16)   (data.name must be microsim_synth)

A model conditioned on a first frame (diffusion.image_conditioning) is scored in simulate mode too: each clip's
own frame 0 and caption in, the rollout scored as `physics_simulate/...`. A "ti2v" model gets both modes (it
also samples from text alone, `physics/...`); a "concat" one needs the frame, so simulate mode only.
"""

from __future__ import annotations

import numpy as np

from microverse_jax import diffusion, pipeline, video
from microverse_jax.datasets.microsim_synth import render

SAMPLES = True
MODES = {"none": ("physics",), "ti2v": ("physics", "physics_simulate"), "concat": ("physics_simulate",)}


def check(c, name: str, settings) -> None:
  if c.data.name != "microsim_synth":  # its validation records are the ground truth the scores need
    raise ValueError(f"evals.{name} (kind physics) needs data.name='microsim_synth', not {c.data.name!r}")
  try:
    import microworldbench.physics  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ValueError(
      f"evals.{name} (kind physics) needs the scorer package: pip install -e ./bench (or --config.evals.{name}.every=0)"
    ) from None


def score_rows(plan, model, tokenizer, encoders, rows, *, seed: int, images=None, **settings) -> dict:
  """All `microworldbench physics` scores of videos sampled for prompt rows (their captions, and first frames
  `images` uint8 (N, H, W, 3) if given), each scored against its own row (process, params, size), with the
  config's sampling settings unless `settings` override them."""
  from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

  videos = pipeline.generate(
    model,
    encoders,
    tokenizer,
    [r["caption"] for r in rows],
    plan.latent_shape,
    seed=seed,
    images=images,
    **{**pipeline.config_settings(plan.c), **settings},
  )
  return score_videos(videos, rows)


def first_frames(rows, height: int, width: int) -> np.ndarray:
  """uint8 (N, height, width, 3): frame 0 of each row's stored clip, read as the input pipeline reads it."""
  return np.stack([video.decode_frames(r["video"], 1, height=height, width=width)[0] for r in rows])


class Evaluator:
  def __init__(self, settings, run):
    self.settings, self.run = settings, run

  def __call__(self, step: int, state, frozen) -> dict:
    run, c = self.run, self.run.c
    rows = render.stored_rows(c.data.data_dir, "validation")[: self.settings.num_clips]
    out = {}
    for prefix in MODES[diffusion.image_conditioning(c.diffusion)]:
      images = first_frames(rows, c.data.height, c.data.width) if prefix == "physics_simulate" else None
      model = run.model(state, frozen)
      scores = score_rows(run.plan, model, run.tokenizer, run.encoders, rows, seed=c.train.seed, images=images)
      scores = {prefix + k.removeprefix("physics"): v for k, v in scores.items()}
      headline = " ".join(f"{k.split('/', 1)[1]}={v:.3g}" for k, v in scores.items() if k.count("/") == 1)
      print(prefix.replace("_", " ") + " " + headline, flush=True)
      # per process means and pass rates, and every check's pass rate (e.g. physics/check/temporal/flicker)
      out.update({k: v for k, v in scores.items() if k.count("/") <= 2 or k.split("/")[1] == "check"})
    return out
