"""Orbax checkpoints of the train state and the data iterator, under WORKDIR/checkpoints/<step>/."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import uuid

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """Async Orbax CheckpointManager keeping `keep` checkpoints of {state, data iterator}.

  `state` is a pytree of arrays (the train state); `data` a Grain iterator with get/set_state.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    directory = epath.Path(workdir) / "checkpoints"  # Orbax takes absolute local paths only
    self.directory = directory if str(directory).startswith("gs://") else epath.Path(os.path.abspath(directory))
    self.manager = ocp.CheckpointManager(
      self.directory,
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
    the data iterator is restored in place. Returns the state (its "step" says which step it is).

    A step with missing or broken files is moved aside to <step>.incomplete-<id> and the latest earlier
    step restored instead, said in one line (on one process; on several, one line asks to move it). A
    state that does not fit the saved one (another config) raises one ValueError naming the difference."""
    _quiet_orphans()
    for s in sorted((s for s in self.manager.all_steps() if s <= step), reverse=True):
      try:
        return self._restore(s, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-exception-caught  (TensorStore raises a bare Exception)
        if not unreadable(e):
          raise
        self._set_aside(s, e)
    raise FileNotFoundError(f"{self.directory}: no readable checkpoint at or before step {step}")

  def _restore(self, step: int, abstract_state, data_iterator):
    saved = stored_shapes(self.directory / str(step) / "state")
    check_fits(saved, abstract_state, f"{self.directory.parent}: the config does not fit checkpoint step {step}")
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

  def _set_aside(self, step: int, error: BaseException) -> None:
    """Moves the unreadable `step` out of the manager's sight (kept for inspection), saying so."""
    folder, aside = self.directory / str(step), self.directory / f"{step}.incomplete-{uuid.uuid4().hex[:6]}"
    what = f"checkpoint step {step} in {self.directory} cannot be read ({reason(error)})"
    if jax.process_count() > 1:  # the processes could disagree on the step: none moves it
      raise ValueError(f"{what}; move it aside (mv {folder} {aside}) and rerun") from None
    folder.rename(aside)
    self.manager.reload()
    gc.collect()  # the failed reads' coroutines end now, while _quiet_orphans listens, not at exit
    print(f"{what}: moved to {aside.name}, trying the step before", flush=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def stored_shapes(path) -> dict[str, tuple]:
  """{dotted name: shape} of the arrays of the Orbax pytree checkpoint at `path` (its metadata only)."""
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
  return {m.name: tuple(m.shape) for m in jax.tree.leaves(metadata)}


# TensorStore's status codes for files that are missing or damaged (not for memory or network errors)
_DAMAGED = ("NOT_FOUND", "DATA_LOSS", "FAILED_PRECONDITION", "OUT_OF_RANGE")


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def unreadable(error: BaseException) -> bool:
  """Whether `error` (or one it came from) says a checkpoint's files are missing or damaged."""
  return any(
    isinstance(e, (FileNotFoundError, NotADirectoryError, json.JSONDecodeError))
    or str(e).startswith(_DAMAGED)
    or str(e).endswith("does not exist.")  # Grain's ValueError for a missing iterator state
    for e in _chain(error)
  )


def _quiet_orphans() -> None:
  """When a restore fails, Orbax's reads still in flight end in its closed event loop and report the same
  failure again, at random times, as "Event loop is closed", "Exception ignored in <coroutine>" and
  asyncio's "Task exception was never retrieved" (many KB). Drops those reports (and only those) from
  the first restore on; the failure itself is raised or said once."""
  if not getattr(sys.unraisablehook, "drops_orphans", False):
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
      if not _orphan(unraisable.exc_value):
        previous(unraisable)

    hook.drops_orphans = True
    sys.unraisablehook = hook
  if _keep_record not in logging.getLogger("asyncio").filters:
    logging.getLogger("asyncio").addFilter(_keep_record)


def _keep_record(record: logging.LogRecord) -> bool:
  return not (record.exc_info and _orphan(record.exc_info[1]))


def _orphan(error: BaseException | None) -> bool:
  text = str(error)
  return error is not None and (
    text == "Event loop is closed" or text.startswith("Encountered error while reading") or unreadable(error)
  )


def reason(error: BaseException, limit: int = 200) -> str:
  """The innermost message of `error`'s chain, on one line of at most `limit` characters."""
  inner = list(_chain(error))[-1]
  text = " ".join(str(inner).split())
  return f"{type(inner).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def check_fits(saved: dict[str, tuple], abstract_state, where: str) -> None:
  """Raises one ValueError (`where`: the first difference) unless `abstract_state`'s arrays are those saved."""
  want = {
    ".".join(_key(k) for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(abstract_state)
  }
  missing, unexpected = sorted(want.keys() - saved.keys()), sorted(saved.keys() - want.keys())
  shapes = [
    f"{k} is {saved[k]} in the checkpoint, {want[k]} in the config"
    for k in sorted(want.keys() & saved.keys(), key=lambda k: (not k.startswith("params."), k))
    if saved[k] != want[k]
  ]
  diffs = shapes + [f"{k} is not saved" for k in missing] + [f"{k} is saved but not in the config" for k in unexpected]
  if diffs:
    more = f" (and {len(diffs) - 1} more differences)" if len(diffs) > 1 else ""
    raise ValueError(f"{where}: {diffs[0]}{more}; resume with the run's own config, or use a new workdir")


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry))))


def abstract_like(tree):
  """ShapeDtypeStructs (keeping each array's sharding) for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
