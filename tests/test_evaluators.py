"""The trainer's evaluators measure what their names say."""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from microverse_jax.evaluators import loss, physics


class _ZeroX0(nnx.Module):
  """Predicts x0 = 0: its velocity error is x0 / sigma, so its loss at timestep t is mean(x0^2) (1000 / t)^2."""

  def __init__(self):
    self.w = nnx.Param(jnp.zeros(()))

  def __call__(self, x, t, context):
    return x * self.w[...]


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_held_out_loss_t_b_is_the_loss_at_timestep_b(shift):
  c = ml_collections.ConfigDict(
    dict(
      diffusion=dict(shift=shift, prediction="x0", weighting="wan", sigma_sampling="uniform", image_conditioning="none")
    )
  )
  graphdef, params, frozen = nnx.split(_ZeroX0(), nnx.Param, ...)
  step = loss.make_eval_step(c.diffusion, graphdef)
  latents = jnp.full((2, 1, 4, 4, 3), 0.5)
  for t in (100, 300, 500, 700, 900):
    s, n = step(params, frozen, latents, None, None, jnp.ones(2), t, jax.random.key(0))
    # high t = high noise = small error: loss_t900 is the high-noise loss, loss_t100 the low-noise one
    np.testing.assert_allclose(float(s / n), 0.25 * (1000 / t) ** 2, rtol=1e-4)


def test_physics_eval_scores_the_runs_validation_clips_each_against_its_own_record(synth_data_dir, monkeypatch):
  from microverse_jax import input_pipeline, pipeline, plans
  from microverse_jax.configs import microsim_tiny
  from microworldbench import physics as scorer

  source = input_pipeline.load_source("microsim_synth", "validation", synth_data_dir)
  records = [source[i] for i in range(len(source))]
  assert [r["id"] for r in records] != sorted(r["id"] for r in records)  # the premise: stored shuffled
  c = microsim_tiny.get_config("test")
  c.data.data_dir, c.evals.physics.num_clips = synth_data_dir, 3
  got = {}
  monkeypatch.setattr(pipeline, "generate", lambda m, e, t, prompts, shape, **kw: got.update(prompts=prompts) or [])
  monkeypatch.setattr(scorer, "score_videos", lambda videos, rows: got.update(rows=rows) or {})
  run = types.SimpleNamespace(
    c=c, plan=plans.resolve(c, 1), tokenizer=None, encoders=None, model=lambda state, frozen: None
  )
  physics.Evaluator(c.evals.physics, run)(0, None, None)
  first = sorted(records, key=lambda r: r["id"])[:3]  # the validation clips with the lowest clip numbers
  assert got["prompts"] == [r["caption"].decode() for r in first]
  for row, r in zip(got["rows"], first):
    assert (row["id"], row["process"], row["size"]) == (r["id"].decode(), r["process"].decode(), r["height"])
    assert row["params"] == json.loads(r["params"])
