"""Stopping and resuming a run: what the trainer does on SIGTERM, and what a resume must keep.

SIGTERM (a preemption notice, `kill`, a Kubernetes pod's end) sets a flag; the trainer saves at the
current step and exits with EXIT_PREEMPTED = 143, the status of a process SIGTERM killed, so that a
launcher, a Kubernetes Job (XPK restarts exit codes 127-255 when --max_restarts > 0) or `train && export`
sees an unfinished run. Rerunning the same command resumes it.

A resume keeps the data's shape (DATA_KEYS): the checkpointed data iterator holds clips already bucketed
and partly batched for it, which a new frame count or batch size cannot take. `check_data_unchanged`
compares the config with the workdir's saved config.json before anything is restored.
"""

from __future__ import annotations

import json
import signal
import threading

from etils import epath

from microverse_jax import saved_config

EXIT_PREEMPTED = 128 + signal.SIGTERM
DATA_KEYS = ("num_frames", "height", "width", "frame_stride", "batch_size", "frame_buckets")


class SigtermFlag:
  """`with SigtermFlag() as sigterm:` SIGTERM sets `sigterm.raised` instead of ending the process; the
  handler before it comes back on exit (the Python API leaves none behind)."""

  def __init__(self):
    self.raised, self._previous = False, None

  def __enter__(self) -> SigtermFlag:
    if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
      self._previous = signal.signal(signal.SIGTERM, self._set)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _set(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.raised = True


def _data_shape(data) -> dict:
  """The DATA_KEYS of a config's `data` section."""
  return {k: tuple(data[k]) if k == "frame_buckets" else data[k] for k in DATA_KEYS}


def _saved_data(workdir: str) -> dict | None:
  """The `data` section of WORKDIR/config.json when WORKDIR holds a checkpoint (a resume), else None."""
  root = epath.Path(workdir)
  path, checkpoints = root / "config.json", root / "checkpoints"
  if not path.exists() or not checkpoints.exists() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
    return None
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: this run's saved config is broken JSON ({e}); a resume is checked against it") from None
  return saved_config.merged(saved).data if isinstance(saved, dict) else None  # not a config: nothing to check


def check_data_unchanged(c, workdir: str) -> None:
  """On a resume, ValueError naming each data key whose value differs from the saved run's, and the workdir."""
  data = _saved_data(workdir)
  if data is None:
    return
  saved, ours = _data_shape(data), _data_shape(c.data)
  changed = [f"data.{k} {saved[k]} -> {ours[k]}" for k in DATA_KEYS if saved[k] != ours[k]]
  if changed:
    raise ValueError(
      f"--workdir={workdir} resumes a run of another data shape: {', '.join(changed)}. Its checkpoint holds "
      f"the data iterator's clips bucketed and batched for the saved shape; keep the saved values "
      f"({epath.Path(workdir) / 'config.json'}) or train in a new --workdir"
    )
