"""Training one Wan2.2 A14B expert (issue 27): train.expert draws timesteps only on its side of
1000 diffusion.boundary_ratio, and exports under the name diffusers' WanPipeline gives that expert."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_train_step import ZeroX0, step_config
from train_helpers import losses, tiny_config

from microverse_jax import diffusion, export, plans, train, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("sigma_sampling", ["uniform", "logit_normal"])
@pytest.mark.parametrize("ratio, shift", [(0.875, 5.0), (0.9, 5.0), (0.875, 1.0)])
def test_each_expert_draws_every_timestep_of_its_range_and_none_outside(sigma_sampling, ratio, shift):
  fm = diffusion.FlowMatching(shift=shift, sigma_sampling=sigma_sampling)
  ranges = {e: fm.expert_indices(ratio, e) for e in ("high", "low")}
  assert ranges["high"][0] == 0 and ranges["high"][1] == ranges["low"][0] and ranges["low"][1] == 1000
  for expert, (lo, hi) in ranges.items():
    index = np.concatenate([np.asarray(fm.sample_index(jax.random.key(k), 10_000, lo, hi)) for k in range(8)])
    t = fm.timesteps[index]
    assert (t >= ratio * 1000).all() if expert == "high" else (t < ratio * 1000).all(), expert
    assert index.min() >= lo and index.max() <= hi - 1
    if sigma_sampling == "uniform":  # every grid point of the range, about equally often
      counts = np.bincount(index - lo, minlength=hi - lo)
      assert counts.min() > 0 and abs(index.mean() - (lo + hi - 1) / 2) < 0.02 * (hi - lo)
    else:  # the logit-normal draw restricted to the range: as the whole range's draws that land in it
      whole = np.asarray(fm.sample_index(jax.random.key(99), 400_000))
      inside = whole[(whole >= lo) & (whole < hi)]
      assert abs(index.mean() - inside.mean()) < 0.02 * (hi - lo) and abs(index.std() - inside.std()) < 0.02 * (hi - lo)
  whole = np.asarray(fm.sample_index(jax.random.key(0), 1000))  # "" keeps the draw of a one-model run
  np.testing.assert_array_equal(whole, np.asarray(fm.sample_index(jax.random.key(0), 1000, *fm.expert_indices(0, ""))))


@pytest.mark.parametrize("expert", ["high", "low"])
def test_the_training_step_draws_the_experts_timesteps(expert):
  c = step_config(expert, boundary_ratio=0.875)
  graphdef, params, frozen = nnx.split(ZeroX0(), nnx.Param, ...)
  tx = optax.sgd(0.0)
  params = params.to_pure_dict()
  step = train_step.make_train_step(types.SimpleNamespace(c=c), graphdef, tx, optax.constant_schedule(0.0))
  run = jax.jit(lambda s, b: step(s, frozen.to_pure_dict(), lambda x: (x, None, None), b)[1]["loss"])
  latents = jnp.full((1, 1, 2, 2, 3), 0.5)
  sigmas = []
  for i in range(200):
    state = {"step": jnp.array(i), "rng": jax.random.key_data(jax.random.key(0)), "skipped": jnp.array(0)}
    state.update(params=params, opt_state=tx.init(params))
    sigmas.append(np.sqrt(0.25 / float(run(state, latents))))  # the sigma of the step's one sample
  sigmas = np.array(sigmas)
  if expert == "high":
    assert sigmas.min() >= 0.875 - 1e-5 and sigmas.max() > 0.99
  else:
    assert sigmas.max() < 0.875 and sigmas.min() < 0.1


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.expert": "high"}, r"train.expert='high' needs diffusion.boundary_ratio > 0"),
    ({"train.expert": "middle", "diffusion.boundary_ratio": 0.9}, r"train.expert='middle': expected one of"),
    ({"diffusion.boundary_ratio": 1.0}, r"diffusion.boundary_ratio=1.0: expected 0 \(one model\)"),
    (
      {"train.expert": "low", "diffusion.boundary_ratio": 0.001},
      r"train.expert='low' with diffusion.boundary_ratio=0.001: no timestep",
    ),
  ],
)
def test_an_expert_without_a_boundary_is_refused_naming_the_keys(overrides, message):
  with pytest.raises(ValueError, match=message):
    plans.resolve(tiny_config("/nonexistent", **overrides), 1)


@pytest.fixture(scope="module")
def low_expert_run(synth_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("low"))
  overrides = {"train.expert": "low", "diffusion.boundary_ratio": 0.875, "train.num_steps": 2}
  train.train(tiny_config(synth_data_dir, **{**overrides, "model.lora_rank": 4}), workdir)
  assert sorted(losses(workdir)) == [1, 2]
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["expert"] == "low"
  return workdir


def test_an_experts_diffusers_export_is_the_wanpipeline_subfolder_and_says_which(low_expert_run, tmp_path):
  out = tmp_path / "A14B"
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "microverse_jax.export",
      f"--workdir={low_expert_run}",
      "--format=diffusers",
      f"--out={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert f"wrote {out / 'transformer_2'} (diffusers, the low-noise expert (timesteps < 875)" in run.stdout
  assert (out / "transformer_2" / "config.json").exists() and not (out / "transformer").exists()


def test_an_experts_lora_export_says_which_transformer_it_loads_into(low_expert_run, tmp_path):
  from microverse_jax import saved_config

  c = saved_config.get_config(low_expert_run)
  export.export(c, low_expert_run, str(tmp_path / "low.safetensors"), "lora")
  assert (tmp_path / "low.safetensors").exists()
  assert "load_into_transformer_2=True" in export.expert_note(c, "lora")
  c.train.expert = "high"
  assert export.destination(c, "out", "diffusers") == os.path.join("out", "transformer")
  assert export.expert_note(c, "diffusers") == ", the high-noise expert (timesteps >= 875): WanPipeline's transformer"
