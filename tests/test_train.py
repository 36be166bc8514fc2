"""The trainer: runs, resumes exactly after kill -9, shards, trains LoRA only, fails early on bad input
(hostile runs: test_train_hostile.py)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import losses, tiny_config

from microverse_jax import checkpoint, plans, sharding, train, train_state
from microverse_jax.models.lora import merge_lora
from microverse_jax.models.wan_dit import WanDiT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def reference_run(synth_data_dir, tmp_path_factory):
  """Six uninterrupted steps: the per-step losses every other run is compared with."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  c = tiny_config(synth_data_dir, **{"train.num_steps": 6, "train.checkpoint_every": 2})
  train.train(c, workdir)
  return workdir


def test_main_writes_metrics_checkpoints_and_config(reference_run):
  got = losses(reference_run)
  assert sorted(got) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(got.values())))
  row = json.loads(open(os.path.join(reference_run, "metrics.jsonl")).readline())
  assert {"step", "loss", "grad_norm", "lr", "steps_per_sec"} <= set(row)
  assert sorted(os.listdir(os.path.join(reference_run, "checkpoints")))[-1] == "6"
  assert json.load(open(os.path.join(reference_run, "config.json")))["train"]["num_steps"] == 6
  assert any(f.startswith("events") for f in os.listdir(os.path.join(reference_run, "tensorboard")))


def test_kill_9_after_a_checkpoint_then_resume_gives_identical_losses(reference_run, synth_data_dir, tmp_path):
  workdir = str(tmp_path / "killed")
  cmd = [
    sys.executable,
    "-m",
    "microverse_jax.train",
    "--config=configs/microsim_tiny.py:test",
    f"--workdir={workdir}",
    f"--config.data.data_dir={synth_data_dir}",
    "--config.train.num_steps=6",
    "--config.train.checkpoint_every=2",
  ]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")) and time.time() < deadline:
    assert proc.poll() is None, "the trainer exited before its first checkpoint"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
  before = losses(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else {}
  # Rerunning the same command resumes from the latest checkpoint and finishes.
  subprocess.run(cmd, cwd=REPO, check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ref, after = losses(reference_run), losses(workdir)
  assert sorted(after) == [1, 2, 3, 4, 5, 6]
  for step, loss in list(before.items()) + list(after.items()):
    assert loss == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step


def test_a_data_fsdp_tensor_mesh_matches_single_device(check_meshes_match_one_device):
  check_meshes_match_one_device({"d2f2t2": dict(data=2, fsdp=2, tensor=2)})


@pytest.mark.heavy
def test_pure_data_and_pure_fsdp_meshes_match_single_device(check_meshes_match_one_device):
  """The heavy variant of the test above: each axis alone over all 8 devices."""
  check_meshes_match_one_device({"data8": dict(data=8), "fsdp8": dict(data=1, fsdp=8)})


def test_lora_changes_only_lora_params_and_merge_equals_base_plus_delta(synth_data_dir, tmp_path):
  c = tiny_config(
    synth_data_dir, **{"model.lora_rank": 4, "model.lora_alpha": 8.0, "train.num_steps": 2, "optim.lr": 1e-2}
  )
  train.train(c, str(tmp_path))
  mesh = sharding.make_mesh(plans.resolve(c, jax.device_count()).mesh_shape)
  states = train_state.StateFactory(plans.resolve(c, jax.device_count()), mesh)
  with jax.set_mesh(mesh):
    init_state, frozen = states.create()
    abstract, _ = states.abstract()
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    state = ckpt.restore(2, abstract, None)
  leaves = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  assert leaves and all(str(path[-1].key).startswith("lora_") for path, _ in leaves)
  changed = [
    not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(init_state["params"]))
  ]
  assert any(changed)
  model = nnx.merge(states.graphdef, state["params"], frozen)
  merged = merge_lora(model)
  attn, merged_attn = model.blocks.self_attn.q, merged.blocks.self_attn.q
  delta = jnp.matmul(attn.lora_a[...], attn.lora_b[...]) * (8.0 / 4)
  np.testing.assert_allclose(merged_attn.kernel[...], attn.kernel[...] + delta, rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(delta).max()) > 0
  x = jax.random.normal(jax.random.key(0), (1, 5, 16, 16, 3))
  ctx = jax.random.normal(jax.random.key(1), (1, 7, c.model.text_dim))
  t = jnp.array([400.0])
  np.testing.assert_allclose(merged(x, t, ctx), model(x, t, ctx), rtol=1e-4, atol=1e-5)
  # The exported checkpoint is the merged model, loadable with lora_rank=0.
  from microverse_jax import convert, export

  export.export(c, str(tmp_path), str(tmp_path / "merged"))
  plain = WanDiT(dataclasses.replace(states.cfg, lora_rank=0), rngs=nnx.Rngs(5))
  convert.load_params(str(tmp_path / "merged"), plain)
  np.testing.assert_allclose(plain.blocks.self_attn.q.kernel[...], merged_attn.kernel[...], rtol=1e-6)


@pytest.mark.parametrize(
  "overrides,error,match",
  [
    ({"mesh.data": 3}, ValueError, r"mesh"),
    ({"optim.grad_accum": 3}, ValueError, r"data.batch_size=4"),
    ({"init_from": "/nonexistent/ckpt"}, FileNotFoundError, r"init_from=/nonexistent/ckpt"),
    ({"data.name": "microsim10k"}, ValueError, r"dataset 'microsim10k' not found"),
    ({"model.in_channels": 4}, ValueError, r"model.in_channels=4"),
    ({"diffusion.prediction": "eps"}, ValueError, r"diffusion.prediction='eps'"),
    ({"train.caption_dropout": 0.1, "data.source": "latents"}, ValueError, r"train.caption_dropout"),
    ({"train.on_nonfinite": "ignore"}, ValueError, r"train.on_nonfinite='ignore'"),
  ],
)
def test_bad_config_fails_before_compilation(synth_data_dir, tmp_path, overrides, error, match):
  with pytest.raises(error, match=match):
    train.train(tiny_config(synth_data_dir, **overrides), str(tmp_path))


def test_unknown_config_key_is_rejected_by_name(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "microverse_jax.train",
    "--config=configs/microsim_tiny.py:test",
    f"--workdir={tmp_path}",
    "--config.train.num_stepz=3",
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "num_stepz" in out.stderr


def test_init_from_a_converted_checkpoint_sets_the_base_weights(synth_data_dir, tmp_path):
  from microverse_jax import convert

  c = tiny_config(synth_data_dir)
  source = WanDiT(plans.dit_config(c), rngs=nnx.Rngs(123))
  convert.save_params(source, str(tmp_path / "ckpt"), "dit")
  want = nnx.state(source, nnx.Param).to_pure_dict()
  for lora_rank in (0, 4):
    c = tiny_config(synth_data_dir, **{"init_from": str(tmp_path / "ckpt"), "model.lora_rank": lora_rank})
    mesh = sharding.make_mesh(plans.resolve(c, jax.device_count()).mesh_shape)
    states = train_state.StateFactory(plans.resolve(c, jax.device_count()), mesh)
    with jax.set_mesh(mesh):
      state, frozen = states.create()
    base = frozen if lora_rank else state["params"]
    got = nnx.state(nnx.merge(states.graphdef, state["params"], frozen), convert.BASE_PARAMS).to_pure_dict()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.leaves(base)


@pytest.mark.parametrize("spec", ["14b,lora,runlocal", "1.3b,lora,official,runlocal"])
def test_the_wan_cpu_smoke_command_trains_through_the_wan_vae(synth_data_dir, tmp_path, spec):
  """docs/training.md's smoke run of the real structure: Wan-VAE on the fly, umT5, LoRA (3 steps); and
  docs/recipe.md's official recipe (`1.3b,lora,official`) at the same tiny size."""
  cmd = [
    sys.executable,
    "-m",
    "microverse_jax.train",
    f"--config=configs/wan2_1.py:{spec}",
    f"--workdir={tmp_path}",
    f"--config.data.data_dir={synth_data_dir}",
  ]
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert sorted(losses(str(tmp_path))) == [1, 2, 3] and all(np.isfinite(list(losses(str(tmp_path)).values())))
