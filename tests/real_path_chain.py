"""The real Wan2.1 path as docs/real_path.md shows it: the commands, and a runner for them.

COMMANDS holds each step's command as the docs print it, with the user's paths as shell variables
($WAN, $CKPT, ...) and the video size as {frames}/{height}/{width}: the docs show it with REAL
sizes, the tests run it with TINY sizes, the variables set to temporary folders, and the TINY_EXTRA
flags appended (steps, batch, task indices: what makes a CPU run of a few minutes).

`Chain` runs steps as subprocesses, each after the steps it needs, at most `parallel` at a time. Another
path's table (a module with COMMANDS, TINY, TINY_EXTRA and NEEDS, e.g. real_path_wan2_2) is given as `table`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = dict(frames=81, height=480, width=832)
TINY = dict(frames=9, height=32, width=32)
JUDGE_MODEL = "gpt-4o"

# Paths a user sets (the docs' first block): the WanPipeline download, converted checkpoints, the
# MicroSim-10K manual download, TFDS data, the latent cache, workdirs, videos, the benchmark files.
VARIABLES = ("WAN", "CKPT", "MANUAL", "DATA", "CACHE", "RUNS", "OUT", "BENCH", "JUDGE_URL")

_ENCODERS = (
  "--config.autoencoder.init_from=$CKPT/vae --config.text.init_from=$CKPT/umt5 --config.text.tokenizer=$WAN/tokenizer"
)
_TRAIN = (
  "python -m microverse_jax.train --config=configs/wan2_1.py:1.3b,{mode} --workdir=$RUNS/{run} "
  "--config.init_from=$CKPT/dit " + _ENCODERS
)
_LATENTS = " --config.data.name=microsim10k_latents --config.data.source=latents --config.data.data_dir=$CACHE"
_VIDEO = " --config.data.name=microsim10k --config.data.source=video --config.data.data_dir=$DATA"
_ENCODE = (
  "python -m microverse_jax.encode --dataset=microsim10k --data_dir=$DATA --split=train --out={out} "
  "--num_frames={{frames}} --height={{height}} --width={{width}} --vae={vae} --text_encoder={text} "
  "--tokenizer=$WAN/tokenizer"
)
_RUBRICS = "--rubrics=$BENCH/MWBenchRubrics.json"
_EVALUATE = (
  "microworldbench evaluate --videos=$OUT/{name} " + _RUBRICS + " --tasks=$BENCH/finaltasks.json "
  "--out=$OUT/{name}_result.json --judge_url=$JUDGE_URL --judge_model=" + JUDGE_MODEL
)
_SAMPLE_CKPT = (
  "python -m microverse_jax.sample --checkpoint={ckpt} --config=configs/wan2_1.py:1.3b,full{enc} "
  + _RUBRICS
  + " --out=$OUT/{name} --num_frames={{frames}} --height={{height}} --width={{width}}"
)

COMMANDS = {
  "convert_dit": "python -m microverse_jax.convert dit --src=$WAN/transformer --out=$CKPT/dit",
  "convert_vae": "python -m microverse_jax.convert vae --src=$WAN/vae --out=$CKPT/vae",
  "convert_umt5": "python -m microverse_jax.convert umt5 --src=$WAN/text_encoder --out=$CKPT/umt5",
  "build": "python -m microverse_jax.build_dataset microsim10k --manual_dir=$MANUAL --data_dir=$DATA",
  "encode": _ENCODE.format(out="$CACHE", vae="$CKPT/vae", text="$CKPT/umt5"),
  "encode_pytorch": _ENCODE.format(out="$CACHE_PYTORCH", vae="$WAN/vae", text="$WAN/text_encoder"),
  "train_lora_latents": _TRAIN.format(mode="lora", run="lora_latents") + _LATENTS,
  "train_full_latents": _TRAIN.format(mode="full", run="full_latents") + _LATENTS,
  "train_lora_video": _TRAIN.format(mode="lora", run="lora_video") + _VIDEO,
  "train_full_video": _TRAIN.format(mode="full", run="full_video") + _VIDEO,
  "sample_lora_latents": f"python -m microverse_jax.sample --workdir=$RUNS/lora_latents {_RUBRICS} "
  "--out=$OUT/lora_latents",
  "sample_full_video": f"python -m microverse_jax.sample --workdir=$RUNS/full_video {_RUBRICS} --out=$OUT/full_video",
  "sample_wan": _SAMPLE_CKPT.format(ckpt="$WAN", enc="", name="wan"),
  "sample_converted": _SAMPLE_CKPT.format(ckpt="$CKPT/dit", enc=" " + _ENCODERS, name="converted"),
  "evaluate_lora_latents": _EVALUATE.format(name="lora_latents"),
  "evaluate_wan": _EVALUATE.format(name="wan"),
  "evaluate_full_video": _EVALUATE.format(name="full_video"),
  "evaluate_converted": _EVALUATE.format(name="converted"),
  "aggregate": (
    "microworldbench aggregate --results $OUT/lora_latents_result.json $OUT/wan_result.json "
    "--name microverse-lora wan2.1 --rubrics=$BENCH/MWBenchRubrics_norm.json "
    "--tasks=$BENCH/finaltasks.json --markdown=$OUT/report.md"
  ),
}
# $CACHE_PYTORCH: the docs show one encode command (either format); the tests also run it from the
# PyTorch folders into a second cache and compare the two.

INDICES = "1-2"  # benchmark tasks sampled and judged in the tests
TRAIN_STEPS = 2
_TINY_TRAIN = [
  "--config.data.num_frames={frames}",
  "--config.data.height={height}",
  "--config.data.width={width}",
  "--config.data.batch_size=2",
  "--config.data.worker_count=0",
  "--config.train.num_steps={steps}",
]
TINY_EXTRA = {
  "encode": ["--batch_size=2"],
  "encode_pytorch": ["--batch_size=2"],
  **{k: _TINY_TRAIN for k in COMMANDS if k.startswith("train_")},
  **{k: [f"--indices={INDICES}", "--steps=2", "--batch_size=2"] for k in COMMANDS if k.startswith("sample_")},
  **{k: [f"--indices={INDICES}", "--no_progress", "--timeout=30"] for k in COMMANDS if k.startswith("evaluate_")},
  "aggregate": ["--bootstrap=100", "--no_progress"],
}
NEEDS = {
  "encode": ["build", "convert_vae", "convert_umt5"],
  "encode_pytorch": ["build"],
  **{
    k: ["convert_dit", "convert_vae", "convert_umt5", "encode" if k.endswith("latents") else "build"]
    for k in COMMANDS
    if k.startswith("train_")
  },
  "sample_lora_latents": ["train_lora_latents"],
  "sample_full_video": ["train_full_video"],
  "sample_converted": ["convert_dit", "convert_vae", "convert_umt5"],
  **{k: ["sample_" + k[len("evaluate_") :]] for k in COMMANDS if k.startswith("evaluate_")},
  "aggregate": ["evaluate_lora_latents", "evaluate_wan"],
}


def shown(name: str) -> str:
  """The command as docs/real_path.md prints it (real sizes)."""
  return COMMANDS[name].format(**REAL)


def argv(name: str, paths: dict[str, str], steps: int = TRAIN_STEPS, table=None) -> list[str]:
  """The command the tests run: tiny sizes, variables set to `paths`, the tiny extras appended."""
  table = table or sys.modules[__name__]
  tiny = table.TINY
  text = table.COMMANDS[name].format(**tiny)
  for var in sorted(paths, key=len, reverse=True):
    text = text.replace(f"${var}", paths[var])
  if "$" in text:
    raise KeyError(f"{name}: unset variable in {text}")
  args = shlex.split(text) + [a.format(steps=steps, **tiny) for a in table.TINY_EXTRA.get(name, [])]
  program = {"python": [sys.executable], "microworldbench": [sys.executable, "-m", "microworldbench"], "cp": ["cp"]}
  return program[args[0]] + args[1:]


def normalized(text: str) -> str:
  """Shell text with line continuations joined and runs of spaces collapsed."""
  return re.sub(r"[ \t]+", " ", text.replace("\\\n", " "))


class Step:
  def __init__(self, name: str):
    self.name, self.done = name, threading.Event()
    self.returncode, self.stdout, self.stderr, self.seconds, self.argv = None, "", "", 0.0, []
    self.priority, self.proc = 0, None

  def describe(self) -> str:
    return (
      f"{self.name} exited {self.returncode} after {self.seconds:.0f}s: {shlex.join(self.argv)}\n"
      f"--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}"
    )


class Chain:
  """Runs COMMANDS steps in subprocesses (cwd: the repo), each once, after the steps it NEEDS (of `table`)."""

  def __init__(
    self,
    paths: dict[str, str],
    *,
    parallel: int = 2,
    steps: int = TRAIN_STEPS,
    env=None,
    timeout: int = 900,
    table=None,
  ):
    self.paths, self.steps, self.timeout = paths, steps, timeout
    self.table = table or sys.modules[__name__]
    self.env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
    self.parallel, self.running, self.waiting = parallel, 0, []
    self.slot_free = threading.Condition()
    self.lock = threading.Lock()
    self.runs: dict[str, Step] = {}
    self.closed = False

  def start(self, *names: str) -> None:
    """Starts `names` (and what they need) in the background; when slots are short, steps started
    earlier go first (list the critical path first)."""
    for name in names:
      self._start(name)

  def _start(self, name: str) -> Step:
    with self.lock:
      if name in self.runs:
        return self.runs[name]
    needs = [self._start(n) for n in self.table.NEEDS.get(name, [])]
    with self.lock:
      step = self.runs[name] = Step(name)
      step.priority = len(self.runs)
    threading.Thread(target=self._run, args=(step, needs), daemon=True).start()
    return step

  def _run(self, step: Step, needs: list[Step]) -> None:
    try:
      for need in needs:
        need.done.wait()
      failed = [n.name for n in needs if n.returncode != 0]
      if failed:
        step.stderr = f"not run: {failed} failed"
        return
      step.argv = argv(step.name, self.paths, self.steps, self.table)
      with self._slot(step.priority):
        t0 = time.time()
        if self.closed:
          step.stderr = "not run: the chain was closed"
          return
        with subprocess.Popen(
          step.argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
          step.proc = proc
          try:
            step.stdout, step.stderr = proc.communicate(timeout=self.timeout)
          except subprocess.TimeoutExpired:
            proc.kill()
            step.stdout, step.stderr = proc.communicate()
            step.stderr += f"\ntimed out after {self.timeout}s"
          step.returncode = proc.returncode
        step.seconds = time.time() - t0
      print(f"[real path] {step.name}: exit {step.returncode}, {step.seconds:.0f}s", flush=True)
    finally:
      step.done.set()

  @contextlib.contextmanager
  def _slot(self, priority: int):
    """One of `parallel` slots; among waiting steps, the lowest priority number gets the next one."""
    with self.slot_free:
      self.waiting.append(priority)
      self.slot_free.wait_for(lambda: self.running < self.parallel and min(self.waiting) == priority)
      self.waiting.remove(priority)
      self.running += 1
    try:
      yield
    finally:
      with self.slot_free:
        self.running -= 1
        self.slot_free.notify_all()

  def close(self) -> None:
    """Runs nothing more and kills the steps still running (their result: not 0)."""
    self.closed = True
    for step in list(self.runs.values()):
      if step.proc is not None and step.proc.poll() is None:
        step.proc.kill()

  def result(self, name: str) -> Step:
    """Runs `name` if needed, waits, and asserts it exited 0 (the assertion shows its output)."""
    step = self._start(name)
    step.done.wait()
    assert step.returncode == 0, step.describe()
    return step
