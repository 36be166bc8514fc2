"""train_state: the schedule and AdamW of a plan, what is trained (all params, or the LoRA factors only), the
state created sharded (or abstract, for a restore), and the DiT a trained workdir samples with (EMA when kept)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import tiny_config

from microverse_jax import checkpoint, plans, sharding, train_state
from microverse_jax.models.wan_dit import WanDiT


def _factory(**overrides):
  plan = plans.resolve(tiny_config("", **overrides), 1)
  mesh = sharding.make_mesh(plan.mesh_shape)
  return train_state.StateFactory(plan, mesh), mesh


def _paths(tree):
  return {".".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------------------------ optimizer
def test_the_trainable_filter_is_lora_only_with_a_rank():
  assert train_state.trainable_filter(plans.dit_config(tiny_config(""))) is nnx.Param
  assert train_state.trainable_filter(plans.dit_config(tiny_config("", **{"model.lora_rank": 4}))) is nnx.LoRAParam


def test_warmup_then_cosine_to_zero_at_the_last_step():
  plan = plans.resolve(tiny_config("", **{"optim.warmup_steps": 2, "train.num_steps": 6}), 1)  # peak 1e-3, cosine
  _, lr = train_state.make_optimizer(plan)
  got = [float(lr(s)) for s in range(7)]
  cosine = [1e-3 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(5)]  # 4 decay steps after the warm-up
  np.testing.assert_allclose(got, [0.0, 5e-4, *cosine], rtol=1e-6, atol=1e-12)
  assert got[-1] == pytest.approx(0.0, abs=1e-12) and float(lr(100)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_without_warmup_the_first_step_trains_at_the_peak_rate(schedule):
  c = tiny_config("", **{"optim.warmup_steps": 0, "optim.schedule": schedule, "train.num_steps": 4})
  _, lr = train_state.make_optimizer(plans.resolve(c, 1))
  want = [1e-3] * 4 if schedule == "constant" else [1e-3 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
  np.testing.assert_allclose([float(lr(s)) for s in range(4)], want, rtol=1e-6)


def test_warmup_then_constant_at_the_scaled_peak():
  c = tiny_config("", **{"optim.schedule": "constant", "optim.warmup_steps": 4, "optim.lr_scaling": "linear"})
  c.optim.reference_batch = 2  # batch 4: twice the reference, twice the rate
  _, lr = train_state.make_optimizer(plans.resolve(c, 1))
  np.testing.assert_allclose(
    [float(lr(s)) for s in (0, 1, 2, 4, 5, 1000)], [0, 5e-4, 1e-3, 2e-3, 2e-3, 2e-3], rtol=1e-6
  )


def test_the_optimizer_is_adamw_at_the_schedules_rate():
  """With the same gradient twice, Adam's bias-corrected step is g / |g| (+ eps); AdamW adds decay x param."""
  plan = plans.resolve(tiny_config("", **{"optim.warmup_steps": 2, "optim.weight_decay": 0.1}), 1)
  tx, lr = train_state.make_optimizer(plan)
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.array([1.0, -2.0, 4.0])}
  opt = tx.init(params)
  first, opt = tx.update(grads, opt, params)
  np.testing.assert_array_equal(first["w"], 0.0)  # lr(0) = 0: the warm-up starts from 0
  second, _ = tx.update(grads, opt, params)
  want = -float(lr(1)) * (np.sign([1.0, -2.0, 4.0]) + 0.1 * 1.0)
  np.testing.assert_allclose(second["w"], want, rtol=1e-5)


# ------------------------------------------------------------------------------ state
def test_full_training_state_is_created_on_the_mesh_with_its_abstract_twin():
  states, mesh = _factory(**{"optim.ema_decay": 0.9, "optim.param_dtype": "bfloat16"})
  with jax.set_mesh(mesh):
    state, frozen = states.create()
  assert set(state) == {"step", "rng", "skipped", "params", "opt_state", "ema"} and int(state["step"]) == 0
  assert jax.tree.leaves(frozen) == [] and "blocks.self_attn.q.kernel" in _paths(state["params"])
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.bfloat16)}  # optim.param_dtype
  for p, e in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema"])):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(e))  # EMA starts at the params
  abstract, _ = states.abstract()
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert (a.shape, a.dtype) == (x.shape, x.dtype) and a.sharding.is_equivalent_to(x.sharding, x.ndim)


def test_lora_trains_only_the_factors_and_keeps_the_base_frozen():
  states, mesh = _factory(**{"model.lora_rank": 4})
  with jax.set_mesh(mesh):
    state, frozen = states.create()
    again = states.create_frozen()
  trained, kept = _paths(state["params"]), _paths(frozen)
  assert trained and all(p.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for p in trained)
  assert "blocks.self_attn.q.kernel" in kept and not any("lora" in p for p in kept)
  assert {p.rsplit(".", 2)[-2] for p in trained} == set(states.cfg.lora_targets)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(again)):  # a resume rebuilds the same base
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------ the DiT of a workdir
def test_load_dit_samples_with_the_ema_weights_of_the_latest_checkpoint(tmp_path, capsys):
  states, mesh = _factory(**{"optim.ema_decay": 0.9})
  with jax.set_mesh(mesh):
    state, _ = states.create()
  state["ema"] = jax.tree.map(lambda x: x + 1.0, state["params"])
  state["step"] = jnp.asarray(2, jnp.int32)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, state, None)
  ckpt.close()
  model = train_state.load_dit(states.plan, workdir=str(tmp_path))
  assert isinstance(model, WanDiT) and f"loaded step 2 of {tmp_path}" in capsys.readouterr().out
  got = nnx.state(model, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state["ema"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_dit_of_a_workdir_without_a_checkpoint_names_it(tmp_path):
  states, _ = _factory()
  with pytest.raises(FileNotFoundError, match=f"--workdir={tmp_path}: no checkpoint in {tmp_path / 'checkpoints'}"):
    train_state.load_dit(states.plan, workdir=str(tmp_path))
