"""Evaluators by name, as big_vision has them: `config.evals` holds entries {kind, every, ...settings}, and
kind K is the module microverse_jax/evaluators/K.py, imported only when an entry names it.

A kind module defines `Evaluator(settings, run)` (settings: the entry's ConfigDict; run: `Run`), whose
`__call__(step, state, frozen) -> dict` returns scalar metrics, with uint8 videos (F, H, W, 3) under the
key "videos" to show; and may define `check(c, name, settings)` (raises before anything is compiled) and
`SAMPLES = True` (it samples videos, so training keeps the frozen encoders).
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Run:
  """What evaluators share with the trainer. `encode`: jitted (enc_state, batch) -> (latents, context)."""

  plan: object  # plans.Plan
  workdir: str
  mesh: object
  tokenizer: object
  encoders: object
  graphdef: nnx.GraphDef
  encode: object
  enc_state: object

  @property
  def c(self):
    return self.plan.c

  def model(self, state, frozen):
    """The DiT to sample: EMA weights when the run keeps them."""
    return nnx.merge(self.graphdef, state.get("ema", state["params"]), frozen)


def _kind_module(c, name: str):
  kind = c.evals[name].kind
  try:
    return importlib.import_module(f"{__name__}.{kind}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{kind}":
      raise
    raise ValueError(f"evals.{name}.kind={kind!r}: no such evaluator (microverse_jax/evaluators/{kind}.py)") from None


def active(c) -> list[str]:
  """The names of config.evals entries that run (every > 0), in order."""
  for name in c.evals:
    if c.evals[name].every < 0:
      raise ValueError(f"evals.{name}.every={c.evals[name].every}: expected steps >= 0 (0: off)")
  return [name for name in c.evals if c.evals[name].every > 0]


def check(c) -> None:
  """Each active entry's kind exists and accepts its settings; raises ValueError naming the key."""
  for name in active(c):
    module = _kind_module(c, name)
    if hasattr(module, "check"):
      module.check(c, name, c.evals[name])


def samples_videos(c) -> bool:
  """Whether an active evaluator samples videos (so training keeps the frozen encoders)."""
  return any(getattr(_kind_module(c, name), "SAMPLES", False) for name in active(c))


def build(c, run: Run) -> list[tuple[int, object]]:
  """(every, evaluator) of each active entry, in config order."""
  return [(c.evals[n].every, _kind_module(c, n).Evaluator(c.evals[n], run)) for n in active(c)]


def scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items() if not isinstance(v, (list, np.ndarray))}
