"""The trainer in ONE process, fed the global batches that N processes would assemble.

  python tests/launch/emulated_processes.py --emulated_processes=2 --config=... --workdir=... [--config.k=v]

Each global batch is the concatenation, in process order, of the per-process batches of the real
input pipeline as JAX process i of N would build it: the reference a multi-process run must match.
"""

from __future__ import annotations

import dataclasses
import json
from unittest import mock

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from microverse_jax import batches, train

config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Workdir.")
_PROCESSES = flags.DEFINE_integer("emulated_processes", 2, "how many processes' input to emulate")


class ConcatenatedShards:
  """Iterator over np.concatenate of one batch from each shard iterator (Grain-checkpointable)."""

  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batches = [next(it) for it in self.iterators]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  @property
  def skip_counts(self) -> dict:
    counts: dict = {}
    for it in self.iterators:
      for k, v in it.skip_counts.items():
        counts[k] = counts.get(k, 0) + v
    return counts

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes) -> None:
    for it, s in zip(self.iterators, json.loads(state)):
      it.set_state(s)

  def start_prefetch(self) -> None:
    pass


def main(argv):
  real_load_batches, n = batches.load_batches, _PROCESSES.value

  def load_batches(plan, tokenizer, split, **kwargs):
    if split != "train":
      return real_load_batches(plan, tokenizer, split, **kwargs)
    plan = dataclasses.replace(plan, frame_buckets=(plan.c.data.num_frames,))  # as plans.resolve gives n processes
    iterators = []
    for i in range(n):  # what process i of n would read
      with mock.patch.object(jax, "process_count", lambda: n), mock.patch.object(jax, "process_index", lambda i=i: i):
        iterators.append(real_load_batches(plan, tokenizer, split, **kwargs))
    return ConcatenatedShards(iterators)

  with mock.patch.object(batches, "load_batches", load_batches):
    train.main(argv)


if __name__ == "__main__":
  app.run(main)
