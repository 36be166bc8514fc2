"""Orbax checkpoints of the train state and the data iterator, under WORKDIR/checkpoints/<step>/."""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """Async Orbax CheckpointManager keeping `keep` checkpoints of {state, data iterator}.

  `state` is a pytree of arrays (the train state); `data` a Grain iterator with get/set_state.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
      self.directory if str(self.directory).startswith("gs://") else os.path.abspath(self.directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into shardings/dtypes of `abstract_state` (ShapeDtypeStructs with sharding);
    the data iterator is restored in place. Returns the state."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (keeping each array's sharding) for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
