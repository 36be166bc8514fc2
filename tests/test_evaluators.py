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


def _validation_records(data_dir: str) -> list:
  from microverse_jax import input_pipeline

  source = input_pipeline.load_source("microsim_synth", "validation", data_dir)
  return [source[i] for i in range(len(source))]


def test_physics_eval_scores_the_runs_validation_clips_each_against_its_own_record(synth_data_dir, monkeypatch):
  from microverse_jax import pipeline, plans
  from microverse_jax.configs import microsim_tiny
  from microworldbench import physics as scorer

  records = _validation_records(synth_data_dir)
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


@pytest.mark.parametrize(
  "mode,in_channels,expected", [("ti2v", 3, [False, True]), ("concat", 7, [True]), ("none", 3, [False])]
)
def test_physics_eval_simulates_from_each_clip_s_first_frame(synth_data_dir, monkeypatch, mode, in_channels, expected):
  """Simulate mode: a first-frame-conditioned model also rolls out each validation clip from its own frame 0."""
  from microverse_jax import pipeline, plans
  from microverse_jax.configs import microsim_tiny
  from microverse_jax.datasets.microsim_synth import DEFAULTS, clip_spec
  from microverse_jax.datasets.microsim_synth.render import stored_clip
  from microworldbench import physics as scorer

  c = microsim_tiny.get_config("test")
  c.data.data_dir, c.evals.physics.num_clips = synth_data_dir, 3
  c.diffusion.image_conditioning, c.model.in_channels = mode, in_channels
  calls = []
  monkeypatch.setattr(pipeline, "generate", lambda m, e, t, prompts, shape, images, **kw: calls.append(images) or [])
  monkeypatch.setattr(scorer, "score_videos", lambda videos, rows: {"physics/pass_rate": 0.25})
  run = types.SimpleNamespace(
    c=c, plan=plans.resolve(c, 1), tokenizer=None, encoders=None, model=lambda state, frozen: None
  )
  scores = physics.Evaluator(c.evals.physics, run)(0, None, None)
  assert [images is not None for images in calls] == expected
  keys = {False: "physics/pass_rate", True: "physics_simulate/pass_rate"}
  assert scores == {keys[simulate]: 0.25 for simulate in expected}
  if True in expected:  # frame 0 of each validation clip, paired by clip id, at the model's size
    settings = dict(num_frames=9, size=32, fps=DEFAULTS["fps"])  # synth_data_dir's build settings
    ids = sorted(int(r["id"].decode().removeprefix("synth_")) for r in _validation_records(synth_data_dir))[:3]
    assert calls[-1].shape == (3, c.data.height, c.data.width, 3) and calls[-1].dtype == np.uint8
    frames = []
    for i in ids:
      spec = clip_spec(i, seed=DEFAULTS["seed"], **settings)
      out = (1, c.data.height, c.data.width)
      frames.append(stored_clip(spec.process, spec.params, seed=spec.seed, **settings, out=out)[0])
    # libx264 in PyAV is not bit-reproducible (the same frames encode to slightly different bytes), so a
    # re-encoded frame 0 is near its clip's, not equal: each image must be nearest its own clip's and near it
    errors = np.abs(calls[-1][:, None].astype(float) - np.stack(frames)[None]).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(3)).all() and errors.diagonal().max() < 3.0, errors
