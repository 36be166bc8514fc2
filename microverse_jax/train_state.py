"""The train state of a `plans.Plan`: trainable params (all, or LoRA only), AdamW with its schedule, EMA, step,
RNG and skipped-update count, created directly into their shardings (jit with out_shardings); and `load_dit`,
the DiT to sample from a run or a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from microverse_jax import checkpoint, convert, encoders, plans, sharding
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig


def trainable_filter(cfg: WanDiTConfig):
  return nnx.LoRAParam if cfg.lora_rank else nnx.Param


def make_optimizer(plan):
  """(AdamW with global-norm clipping, its learning-rate schedule): warm-up, then constant or cosine to 0 at
  the plan's num_steps, from its peak_lr."""
  o = plan.c.optim
  peak = plan.peak_lr
  decay = max(plan.num_steps - o.warmup_steps, 1)
  if o.warmup_steps <= 0:  # the first step trains at the peak rate
    lr = optax.cosine_decay_schedule(peak, decay) if o.schedule == "cosine" else optax.constant_schedule(peak)
  elif o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, peak, max(o.warmup_steps, 1), o.warmup_steps + decay)
  else:
    lr = optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(o.warmup_steps, 1)), optax.constant_schedule(peak)],
      [max(o.warmup_steps, 1)],
    )
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  return optax.chain(*parts), lr


class StateFactory:
  """Creates the train state directly sharded (jit with out_shardings), never as a full host copy."""

  def __init__(self, plan, mesh):
    self.plan, self.c, self.mesh, self.cfg = plan, plan.c, mesh, plan.dit
    rules = plan.rules
    self.tx, self.schedule = make_optimizer(plan)
    abstract = nnx.eval_shape(lambda: WanDiT(self.cfg, rngs=nnx.Rngs(0)))
    self.graphdef, params, frozen = nnx.split(abstract, trainable_filter(self.cfg), ...)
    replicated = NamedSharding(mesh, P())
    self.param_shardings = encoders.shardings_of(params, mesh, rules)
    self.frozen_shardings = encoders.shardings_of(frozen, mesh, rules)
    abstract_opt = jax.eval_shape(self.tx.init, params.to_pure_dict())
    opt_shardings = optax.tree_map_params(
      self.tx, lambda _, s: s, abstract_opt, self.param_shardings, transform_non_params=lambda _: replicated
    )
    self.state_shardings = {
      "step": replicated,
      "rng": replicated,
      "skipped": replicated,
      "params": self.param_shardings,
      "opt_state": opt_shardings,
    }
    if plan.c.optim.ema_decay > 0:
      self.state_shardings["ema"] = self.param_shardings

  def _init(self, seed):
    model = WanDiT(self.cfg, rngs=nnx.Rngs(seed))
    _, params, frozen = nnx.split(model, trainable_filter(self.cfg), ...)
    dtype = jnp.dtype(self.c.optim.param_dtype)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    params, frozen = (jax.tree.map(cast, x.to_pure_dict()) for x in (params, frozen))
    state = {
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.key(seed)),
      "skipped": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.tx.init(params),
    }
    if self.c.optim.ema_decay > 0:
      state["ema"] = params
    return state, frozen

  def create(self):
    """(state, frozen) on the mesh; base weights from `init_from` when set."""
    init = jax.jit(self._init, static_argnums=0, out_shardings=(self.state_shardings, self.frozen_shardings))
    state, frozen = init(self.c.train.seed)
    if self.c.init_from:  # base weights: the trainable params (full) or the frozen ones (LoRA)
      if self.cfg.lora_rank:
        frozen = convert.restore_params(self.c.init_from, checkpoint.abstract_like(frozen), kind="dit")
      else:
        state["params"] = convert.restore_params(
          self.c.init_from, checkpoint.abstract_like(state["params"]), kind="dit"
        )
        if "ema" in state:
          state["ema"] = jax.tree.map(jnp.copy, state["params"])
    return state, frozen

  def create_frozen(self):
    """Only the frozen (never checkpointed) params, for a resume: what `create` returns second."""
    if self.c.init_from and self.cfg.lora_rank:
      return convert.restore_params(self.c.init_from, self.abstract()[1], kind="dit")
    return jax.jit(lambda: self._init(self.c.train.seed)[1], out_shardings=self.frozen_shardings)()

  def abstract(self):
    """ShapeDtypeStructs (with shardings) of (state, frozen), for restore and AOT compiles."""
    shapes = jax.eval_shape(functools.partial(self._init, self.c.train.seed))
    shard = (self.state_shardings, self.frozen_shardings)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard)


def load_dit(plan, *, workdir: str | None = None, checkpoint_dir: str | None = None) -> WanDiT:
  """The DiT to sample: a training workdir's latest checkpoint (EMA weights when present, base
  weights as the run had them), or a converted / PyTorch checkpoint."""
  c, rules = plan.c, plan.rules
  mesh = sharding.make_mesh(plan.mesh_shape)
  if checkpoint_dir:
    cfg = dataclasses.replace(
      plans.checkpoint_config(checkpoint_dir, "dit"),
      **{k: getattr(plan.dit, k) for k in plans.RUN_FIELDS if k != "lora_rank"},
      lora_rank=0,
    )
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return encoders.frozen_module(
        WanDiT, cfg, init_from=checkpoint_dir, kind="dit", seed=0, mesh=mesh, rules=rules, name="DiT"
      )
  states = StateFactory(plan, mesh)
  if states.cfg.lora_rank and not c.init_from:
    print(
      f"LoRA base weights: the seeded random init of train.seed={c.train.seed}, as the run trained "
      "them (its config has no init_from)",
      flush=True,
    )
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoint in {ckpt.directory}")
  with jax.set_mesh(mesh):
    abstract_state, _ = states.abstract()
    frozen = states.create_frozen()
    state = ckpt.restore(step, abstract_state, None)
  ckpt.close()
  print(f"loaded step {step} of {workdir}", flush=True)
  return nnx.merge(states.graphdef, state.get("ema", state["params"]), frozen)
