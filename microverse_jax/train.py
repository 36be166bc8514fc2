"""The canonical trainer: flow-matching training of the Wan DiT, sharded over a device mesh.

  python -m microverse_jax.train --config=configs/microsim_tiny.py --workdir=DIR [--config.key=value ...]

Rerunning the same command resumes from the latest checkpoint in DIR/checkpoints. SIGTERM saves
at the current step and exits with status 143 (resume.py). A local workdir is locked while a run uses it.
Projects fork a config, not this file. The config resolves once into a plans.Plan; the loss and the step live in
train_step.py, the periodic evaluations named in config.evals in microverse_jax/evaluators/.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from flax import nnx
from ml_collections import config_flags

from microverse_jax import (
  batches,
  build_dataset,
  checkpoint,
  cli,
  encoders as encoders_lib,
  evaluators,
  files,
  flops,
  plans,
  sharding,
  train_state,
)
from microverse_jax.resume import EXIT_PREEMPTED, SigtermFlag, check_data_unchanged
from microverse_jax.train_step import jit_train_step, make_encode


# =============================================================================================
# Metrics: WORKDIR/metrics.jsonl, TensorBoard, a progress line (process 0 only)
# =============================================================================================
class MetricWriter:
  """Appends rows to WORKDIR/metrics.jsonl (rewritten whole and atomically: GCS objects cannot be
  appended to) and TensorBoard. On a resume, rows past the restored step are dropped."""

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.lines = []
    if self.path.exists():
      for line in self.path.read_text().splitlines():
        try:
          if json.loads(line)["step"] <= resume_step:
            self.lines.append(line)
        except (ValueError, KeyError, TypeError):
          continue  # a torn or foreign line is dropped
    self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {k: float(v) for k, v in metrics.items()}
    # Undefined values (e.g. a physics score with no tracks) are JSON null, never a bare NaN.
    self.lines.append(json.dumps({"step": step, **{k: v if math.isfinite(v) else None for k, v in row.items()}}))
    files.write_text(self.path, "\n".join(self.lines) + "\n")
    for k, v in row.items():
      if math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def images(self, step: int, videos: list[np.ndarray]) -> None:
    """Each sample as a strip of 8 frames."""
    if self.enabled:
      from microverse_jax.pipeline import filmstrip  # pylint: disable=g-import-not-at-top

      for i, v in enumerate(videos):
        self.tb.add_image(f"samples/{i}", filmstrip(v), step, dataformats="HWC")
      self.tb.flush()

  def config(self, c) -> None:
    """The config as TensorBoard hparams (scalars and strings) and as text."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top

    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flatten(c.to_dict()).items()}
    for summary in hparams(flat, {"loss": float("nan")}):
      self.tb.file_writer.add_summary(summary)
    self.tb.add_text("config", "```\n" + c.to_json_best_effort(indent=1) + "\n```", 0)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class WorkdirLock:
  """An exclusive lock on a local WORKDIR/.lock (released by the OS when the holder dies, so a
  killed run never leaves a stale lock). gs:// workdirs are not locked (no flock on GCS)."""

  def __init__(self, workdir: str):
    self.file = None
    if files.is_remote(workdir) or jax.process_index() != 0:
      return
    path = os.path.join(workdir, ".lock")
    self.file = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      self.file.close()
      raise FileExistsError(f"{workdir} is in use by {holder}; wait for it or use another --workdir") from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
    self.file.flush()

  def release(self) -> None:
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()
      self.file = None


# =============================================================================================
# main
# =============================================================================================
def train(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training; returns the last logged metrics and `step`, where it stopped (SIGTERM: early)."""
  sharding.maybe_initialize_distributed()
  workdir = str(epath.Path(workdir).expanduser())
  plan = plans.resolve(c, jax.device_count(), num_processes=jax.process_count())
  plans.check_trainable(c)
  evaluators.check(c)
  files.require_kind(workdir, (None, "run", "other"), "--workdir")  # never a checkpoint, an export or a cache
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lock = WorkdirLock(workdir)
  try:
    check_data_unchanged(c, workdir)  # before anything is restored, or config.json rewritten
    return _train(plan, workdir)
  finally:
    lock.release()


def _train(plan: plans.Plan, workdir: str) -> dict:
  # ---------------------------------------------------------------- mesh
  c, rules = plan.c, plan.rules
  mesh = sharding.make_mesh(plan.mesh_shape)
  print(f"mesh {plan.mesh_shape} over {jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  if jax.process_count() > 1 and jax.process_index() == 0:
    print(
      f"{jax.process_count()} processes: one length bucket ({c.data.num_frames} frames); shorter clips "
      "are skipped and counted (docs/recipe.md)",
      flush=True,
    )

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules), SigtermFlag() as sigterm:
    # -------------------------------------------------------------- data
    needs_encoders = c.data.source == "video" or evaluators.samples_videos(c)  # a cache holds both encodings
    tokenizer, encoders = encoders_lib.build_encoders(plan, mesh) if needs_encoders else (None, None)
    train_iter = batches.load_batches(plan, tokenizer, "train", seed=c.train.seed, shuffle=True)
    if plan.num_steps <= 0:  # the official schedule: epochs over the train split (held-out excluded)
      plan = plan.with_train_records(train_iter.num_records)
      print(f"train.num_steps = {plan.num_steps:,} ({train_iter.num_records:,} train clips)", flush=True)

    # -------------------------------------------------------------- model and state
    states = train_state.StateFactory(plan, mesh)
    ckpt = checkpoint.Checkpointer(workdir, keep=c.train.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is None:
      state, frozen = states.create()
    else:
      abstract_state, _ = states.abstract()
      frozen = states.create_frozen()
      state = ckpt.restore(latest, abstract_state, train_iter)
      print(f"resumed from step {int(state['step'])}", flush=True)
    if jax.process_index() == 0:  # only now: a resume that fails leaves the run's own config
      files.write_text(epath.Path(workdir) / "config.json", c.to_json_best_effort(indent=1))
      files.mark(workdir, "run")
    enc_graphdef, enc_state = nnx.split(encoders) if encoders is not None else (None, {})
    n_train = sum(x.size for x in jax.tree.leaves(state["params"]))
    print(f"trainable parameters: {n_train:,}", flush=True)

    # -------------------------------------------------------------- step
    encode = make_encode(plan, enc_graphdef)
    train_step = jit_train_step(plan, states, encode)
    run = evaluators.Run(plan, workdir, mesh, tokenizer, encoders, states.graphdef, jax.jit(encode), enc_state)
    evals = evaluators.build(c, run)

    # -------------------------------------------------------------- loop
    step = int(state["step"])
    writer = MetricWriter(workdir, resume_step=step)
    if step == 0:
      writer.config(c)
    step_flops = flops.train_step_flops(plan.dit, c.data.batch_size, plan.latent_shape[:3], c.text.max_length)
    peak = flops.peak_flops(jax.devices()[0])
    compiled = {}  # one compiled step per batch shape (length buckets: a few, each compiled once)
    profiling = c.train.profile_start >= 0 and jax.process_index() == 0
    last, t0, t_steps, t_start, first_step, pending = {}, time.time(), step, time.time(), step, None
    while step < plan.num_steps and not sigterm.raised:
      batch = batches.to_global(next(train_iter), mesh, rules)
      shape = tuple((k, v.shape) for k, v in sorted(batch.items()))
      if shape not in compiled:
        t_compile = time.time()
        compiled[shape] = train_step.lower(state, frozen, enc_state, batch).compile()
        t_compile = time.time() - t_compile
        t0, t_start = t0 + t_compile, t_start + t_compile  # rates count steps, not compiles
        if jax.process_index() == 0:
          print(
            f"compiled the step for {' '.join(f'{k}{v}' for k, v in shape)} in {t_compile:.1f} s "
            f"({len(compiled)} shape{'s' if len(compiled) > 1 else ''})",
            flush=True,
          )
      if profiling and step == c.train.profile_start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, metrics = compiled[shape](state, frozen, enc_state, batch)
      step += 1
      if profiling and step == c.train.profile_start + c.train.profile_steps:
        jax.profiler.stop_trace()
      if c.train.on_nonfinite == "stop":  # checked one step late: the host never waits on the step in flight
        check_finite(pending, ckpt)
        pending = (step, metrics)
      if step % c.train.log_every == 0 or step == plan.num_steps:
        now = time.time()
        dt = (now - t0) / max(step - t_steps, 1)
        last = {k: float(v) for k, v in metrics.items() if k != "finite"}
        last.update(steps_per_sec=1.0 / dt, skipped_clips=float(sum(train_iter.skip_counts.values())))
        if peak:
          last["mfu"] = step_flops / dt / (peak * jax.device_count())
        writer.write(step, last)
        if jax.process_index() == 0:
          rate = (step - first_step) / max(now - t_start, 1e-9)
          print(
            f"step {step}/{plan.num_steps} loss {last['loss']:.4g} {rate:.3g} steps/s "
            f"ETA {cli.format_seconds((plan.num_steps - step) / rate)}",
            flush=True,
          )
        t0, t_steps = now, step
      for every, evaluate in evals:
        if step % every == 0:
          results = evaluate(step, state, frozen)
          writer.write(step, evaluators.scalars(results))
          writer.images(step, results.get("videos", []))
      if step % c.train.checkpoint_every == 0 or step == plan.num_steps or sigterm.raised:
        check_finite(pending, ckpt)  # a non-finite update is never saved
        ckpt.save(step, state, train_iter, force=True)
    ckpt.close()
  if step < plan.num_steps:
    print(f"SIGTERM at step {step}/{plan.num_steps}, all saved: rerun the same command to resume", flush=True)
  return {**last, "step": step, "num_steps": plan.num_steps}


def check_finite(pending, ckpt) -> None:
  """Raises (nothing saved) if the update of `pending` = (step, metrics) was non-finite."""
  if pending is None or bool(pending[1]["finite"]):
    return
  (step, m), last_good = pending, ckpt.latest_step()
  ckpt.close()
  raise FloatingPointError(
    f"non-finite update at step {step} (loss {float(m['loss'])}, grad norm {float(m['grad_norm'])}): not saved; "
    f"the last good checkpoint (step {last_good}) is intact in {ckpt.directory}. "
    "--config.train.on_nonfinite=skip skips such updates instead"
  )


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.workdir is None or flags.FLAGS.config is None:
    raise ValueError("--config and --workdir are required")
  build_dataset.ensure_offline(flags.FLAGS.config.data.name, flags.FLAGS.config.data.data_dir)  # first use
  if (end := train(flags.FLAGS.config, flags.FLAGS.workdir))["step"] < end["num_steps"]:
    raise SystemExit(EXIT_PREEMPTED)  # saved, not finished: a launcher or a Job reruns it to resume


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go (local or gs://).")
  cli.run(main)
