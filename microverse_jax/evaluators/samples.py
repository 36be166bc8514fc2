"""Videos of `prompts` to WORKDIR/samples/step_<N>/<i>.mp4 (+ PNG strips), with the config's sampling settings.

evals.samples = dict(kind="samples", every=2400, prompts=("A cell divides into two.",))
"""

from __future__ import annotations

import jax
from etils import epath

from microverse_jax import pipeline

SAMPLES = True


def check(c, name: str, settings) -> None:
  if not settings.prompts:
    raise ValueError(f"evals.{name}.prompts is empty: give the prompts to sample (or evals.{name}.every=0)")


class Evaluator:
  def __init__(self, settings, run):
    self.settings, self.run = settings, run

  def __call__(self, step: int, state, frozen) -> dict:
    run = self.run
    out_dir = epath.Path(run.workdir) / "samples" / f"step_{step}"
    videos = pipeline.generate(
      run.model(state, frozen),
      run.encoders,
      run.tokenizer,
      list(self.settings.prompts),
      run.plan.latent_shape,
      seed=run.c.train.seed,
      **pipeline.config_settings(run.c),
    )
    if jax.process_index() == 0:
      for i, v in enumerate(videos):
        pipeline.save_video(v, str(out_dir / f"{i}.mp4"), fps=run.c.sample.fps, strip=True)
      print(f"samples: {out_dir}", flush=True)
    return {"videos": videos}
