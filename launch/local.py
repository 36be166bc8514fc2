r"""Local CPU runs: one process, or several processes on this machine that form one multi-process
JAX run (what a multi-host TPU slice does, with simulated CPU devices).

  python -m microverse_jax.launch.local --config=configs/microsim_tiny.py --workdir=workdir/tiny \
      [--config.key=value ...]
  python -m microverse_jax.launch.local --config=configs/microsim_tiny.py:test --workdir=/tmp/mp \
      --num_processes=2 --devices_per_process=4 [--timeout=600] [--dry_run]

The config and its overrides are loaded first (and, with --devices_per_process, validated against
num_processes x devices_per_process devices): a typo fails here, in one line (launch/preflight.py).

Each process of a multi-process run gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES
and JAX_PROCESS_ID (the trainer then calls jax.distributed.initialize) and
XLA_FLAGS=--xla_force_host_platform_device_count=N; their output goes to LOG_DIR/process-<i>.log.
If one process fails, the others are stopped (they would wait for it at the next collective).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

from microverse_jax.launch import preflight, shell


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(
  process_id: int, num_processes: int, *, devices: int | None, port: int | None, platforms: str = "cpu"
) -> dict[str, str]:
  """Environment of one local process (only the variables the launcher sets)."""
  env = {"JAX_PLATFORMS": platforms}
  if devices:
    flags = [
      f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  if num_processes > 1:
    env.update(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id)
    )
  return env


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)  # each process leads its own group (Grain workers included)
  for p in procs:
    p.wait()


def _tail(path: str, n: int = 40) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-n:])


def run(
  train: Sequence[str],
  runner: shell.Runner,
  *,
  num_processes: int = 1,
  devices_per_process: int | None = None,
  log_dir: str | None = None,
  timeout: float | None = None,
  platforms: str = "cpu",
) -> None:
  """Runs the trainer in `num_processes` local processes; raises if any fails or the time runs out."""
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes}: expected >= 1")
  if num_processes == 1:
    runner(train, env=process_env(0, 1, devices=devices_per_process, port=None, platforms=platforms), timeout=timeout)
    return
  if not log_dir:
    raise ValueError("a multi-process run needs --log_dir for the processes' output")
  port = free_port()
  envs = [
    process_env(i, num_processes, devices=devices_per_process, port=port, platforms=platforms)
    for i in range(num_processes)
  ]
  logs = [os.path.join(log_dir, f"process-{i}.log") for i in range(num_processes)]
  for env, log in zip(envs, logs):
    runner.show([*train], env)
    runner.note(f"  (in the background, output to {log})")
  if runner.dry_run:
    return
  os.makedirs(log_dir, exist_ok=True)
  procs = []
  try:
    for env, log in zip(envs, logs):
      with open(log, "w") as out:
        procs.append(
          subprocess.Popen(
            list(train), env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
          )
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    while None in [p.poll() for p in procs]:  # poll every process, not just the first running one
      failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
      if failed:
        i = failed[0]
        shell.raise_if_preempted(procs[i].returncode, f"process {i} (log {logs[i]})")
        raise RuntimeError(
          f"process {i} exited with {procs[i].returncode}; its log ({logs[i]}) ends:\n" + _tail(logs[i])
        )
      if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"{num_processes} processes still running after {timeout:.0f} s; logs in {log_dir}")
      time.sleep(0.2)
    failed = [i for i, p in enumerate(procs) if p.returncode]
    if failed:
      i = failed[0]
      shell.raise_if_preempted(procs[i].returncode, f"process {i} (log {logs[i]})")
      raise RuntimeError(f"process {i} exited with {procs[i].returncode}; its log ({logs[i]}) ends:\n" + _tail(logs[i]))
  finally:
    _stop(procs)


def parser():
  p = shell.base_parser(__doc__, prog=shell.program(__spec__, "launch/local.py"))
  p.add_argument("--num_processes", type=int, default=1, help="processes that form one JAX run")
  p.add_argument(
    "--devices_per_process",
    type=int,
    default=None,
    help="simulated CPU devices per process (--xla_force_host_platform_device_count)",
  )
  p.add_argument("--log_dir", default=None, help="multi-process output (default WORKDIR/logs)")
  p.add_argument("--timeout", type=float, default=None, help="seconds before every process is stopped")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args, extra = parser().parse_known_args(argv)
  overrides = shell.check_override_flags(extra)
  devices = args.num_processes * args.devices_per_process if args.devices_per_process else None
  preflight.check(args.config, overrides, devices=devices, hosts=args.num_processes, remote=False)
  train = shell.train_argv(args.config, args.workdir, overrides, python=sys.executable)
  log_dir = args.log_dir or os.path.join(args.workdir, "logs")
  if args.num_processes > 1 and "://" in log_dir:
    raise ValueError(f"--log_dir={log_dir}: process logs are written locally; pass a local --log_dir")
  run(
    train,
    shell.Runner(args.dry_run),
    num_processes=args.num_processes,
    devices_per_process=args.devices_per_process,
    log_dir=log_dir,
    timeout=args.timeout,
  )


if __name__ == "__main__":
  shell.cli(main)
