"""Cloud TPU VMs: create a slice (directly or as a queued resource), install this repo on every
worker, train on all workers at once, collect each worker's log, delete the slice.

  python -m launch.tpu --name=mv-pod --zone=us-east5-a --project=PROJECT --accelerator_type=v5p-64 \
      --config=configs/wan2_1.py:1.3b,lora --workdir=gs://BUCKET/runs/lora \
      [--queued] [--spot | --reserved] [--repo_url=URL --branch=B] \
      [--steps=create,install,run,logs,delete] [--dry-run] [--config.optim.lr=2e-4 ...]

--dry-run prints every command and runs none. Install copies the local working tree (git-tracked and
untracked-but-not-ignored files) to every worker, or clones --repo_url there, then installs
`-e ./bench -e '.[tpu]'` into a Python 3.11 venv made with uv (TPU VM images ship Python 3.10).
A multi-host slice runs the trainer on every worker (`--worker=all`) with MICROVERSE_DISTRIBUTED=1,
which makes it call jax.distributed.initialize(); its workdir must be shared: gs://.
Logs: every worker tees its output to ~/microverse-logs/RUN.log; `logs` copies them to
--log_dir/RUN.worker-<i>.log. `logs` and `delete` also run when training fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Sequence

from launch import shell, topologies

REMOTE_DIR = "microverse-jax"     # on each worker, relative to the home directory
REMOTE_VENV = "microverse-venv"
REMOTE_LOGS = "microverse-logs"
TARBALL = "microverse-jax.tar.gz"
PYTHON = f"../{REMOTE_VENV}/bin/python"  # relative to REMOTE_DIR, where the trainer runs
STEPS = ("create", "install", "run", "logs", "delete")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def check_workdir(tpu: topologies.TpuSlice, workdir: str) -> None:
  """Multi-host slices need a workdir every worker sees (Orbax writes from all of them)."""
  if tpu.multi_host and not workdir.startswith("gs://"):
    raise ValueError(f"--workdir={workdir}: {tpu.accelerator_type} has {tpu.hosts} workers, which "
                     f"need a shared gs:// workdir for checkpoints and metrics")


@dataclasses.dataclass(frozen=True)
class TpuVm:
  """One TPU VM slice and the gcloud commands that manage it and run on it."""
  name: str
  zone: str
  slice: topologies.TpuSlice
  project: str | None = None
  queued: bool = False            # gcloud compute tpus queued-resources (waits for capacity)
  spot: bool = False
  reserved: bool = False
  runtime_version: str | None = None
  repo_url: str | None = None     # git clone URL; None: copy the local working tree
  branch: str | None = None
  python_version: str = "3.11"

  def __post_init__(self):
    if not _NAME.fullmatch(self.name):
      raise ValueError(f"--name={self.name!r}: TPU names are lowercase letters, digits and '-', "
                       f"start with a letter, at most 63 characters")
    if self.slice.runtime_version is None and self.runtime_version is None:
      raise ValueError(f"{self.slice.accelerator_type}: {self.slice.generation.name} is offered through "
                       f"GKE only; launch it with launch/xpk.py")
    if self.spot and self.reserved:
      raise ValueError("--spot and --reserved exclude each other")
    if not self.zone:
      raise ValueError("--zone is required")

  @property
  def version(self) -> str:
    return self.runtime_version or self.slice.runtime_version

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

  def _capacity(self) -> list[str]:
    return ["--spot"] * self.spot + ["--reserved"] * self.reserved

  # ------------------------------------------------------------------ lifecycle
  def create_commands(self) -> list[list[str]]:
    """Create the slice; for a queued resource, then the status query to poll until ACTIVE."""
    if self.queued:
      return [
          ["gcloud", "compute", "tpus", "queued-resources", "create", self.name, f"--node-id={self.name}",
           *self._where(), f"--accelerator-type={self.slice.accelerator_type}",
           f"--runtime-version={self.version}", *self._capacity()],
          self.queued_state_command(),
      ]
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", self.name, *self._where(),
             f"--accelerator-type={self.slice.accelerator_type}", f"--version={self.version}",
             *self._capacity()]]

  def queued_state_command(self) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", self.name, *self._where(),
            "--format=value(state.state)"]

  def delete_commands(self) -> list[list[str]]:
    if self.queued:  # --force also deletes the TPU VM the queued resource made
      return [["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self._where(),
               "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self._where(), "--quiet"]]

  # ------------------------------------------------------------------ on the workers
  def ssh(self, script: str, worker: str = "all") -> list[str]:
    """Runs `script` in the login shell (bash) on `worker` ("all" or an index); all at once."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, *self._where(),
            f"--worker={worker}", f"--command={script}"]

  def scp(self, source: str, destination: str, worker: str = "all") -> list[str]:
    """Copies between here and workers; remote paths are NAME:path (relative to the home directory)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", source, destination, *self._where(),
            f"--worker={worker}"]

  def install_commands(self, tarball: str | None = None) -> list[list[str]]:
    """Copy (tarball of the working tree) or clone the repo on every worker, then pip install it."""
    uv = '"$HOME/.local/bin/uv"'
    setup = (f"cd {REMOTE_DIR} && curl -LsSf https://astral.sh/uv/install.sh | sh && "
             f'{uv} venv --allow-existing --python={self.python_version} "$HOME/{REMOTE_VENV}" && '
             f'{uv} pip install --python="$HOME/{REMOTE_VENV}/bin/python" -e ./bench -e ".[tpu]"')
    if self.repo_url:
      branch = f" --branch={shlex.quote(self.branch)}" if self.branch else ""
      fetch = f"rm -rf {REMOTE_DIR} && git clone --depth=1{branch} {shlex.quote(self.repo_url)} {REMOTE_DIR}"
      return [self.ssh(f"set -euo pipefail; {fetch} && {setup}")]
    if tarball is None:
      raise ValueError("install: pass the working-tree tarball, or set --repo_url")
    fetch = f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf {TARBALL} -C {REMOTE_DIR}"
    return [self.scp(tarball, f"{self.name}:{TARBALL}"), self.ssh(f"set -euo pipefail; {fetch} && {setup}")]

  def run_command(self, train: Sequence[str], run_name: str) -> list[str]:
    """The trainer on every worker, its output teed to ~/microverse-logs/RUN.log; exits with its status."""
    env = "MICROVERSE_DISTRIBUTED=1 " if self.slice.multi_host else ""
    script = (f"set -o pipefail; mkdir -p ~/{REMOTE_LOGS} && cd {REMOTE_DIR} && "
              f"{env}{shlex.join(train)} 2>&1 | tee ~/{REMOTE_LOGS}/{run_name}.log")
    return self.ssh(script)

  def logs_commands(self, run_name: str, log_dir: str) -> list[list[str]]:
    """One copy per worker (their logs share a name): LOG_DIR/RUN.worker-<i>.log."""
    return [self.scp(f"{self.name}:{REMOTE_LOGS}/{run_name}.log",
                     os.path.join(log_dir, f"{run_name}.worker-{i}.log"), worker=str(i))
            for i in self.slice.workers]


def train_command(config: str, workdir: str, overrides: Sequence[str] = ()) -> list[str]:
  """The trainer command each worker runs (from ~/microverse-jax, with the venv's Python)."""
  return shell.train_argv(config, workdir, overrides, python=PYTHON)


def pack_working_tree(repo_root: str, destination: str) -> int:
  """Tars git-tracked and untracked-but-not-ignored files of `repo_root`; returns the file count."""
  listing = subprocess.run(["git", "-C", repo_root, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True, timeout=60)
  files = [f for f in listing.stdout.decode().split("\0") if f and os.path.isfile(os.path.join(repo_root, f))]
  tmp = f"{destination}.tmp"
  with tarfile.open(tmp, "w:gz") as tar:
    for f in files:
      tar.add(os.path.join(repo_root, f), arcname=f)
  os.replace(tmp, destination)
  return len(files)


def wait_until_active(vm: TpuVm, runner: shell.Runner, *, timeout_s: float, poll_s: float = 30.0) -> None:
  """Polls the queued resource's state until ACTIVE (capacity granted, VMs up)."""
  if runner.dry_run:
    runner.show(vm.queued_state_command())
    runner.note(f"repeat the query above every {poll_s:.0f} s until it prints ACTIVE")
    return
  deadline = time.monotonic() + timeout_s
  while True:
    state = runner(vm.queued_state_command(), capture=True, timeout=120).stdout.strip()
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED", "SUSPENDING"):
      raise RuntimeError(f"queued resource {vm.name} is {state}")
    if time.monotonic() > deadline:
      raise TimeoutError(f"queued resource {vm.name} still {state or 'unknown'} after {timeout_s:.0f} s")
    time.sleep(poll_s)


def launch(vm: TpuVm, runs: Sequence[tuple[str, list[str]]], steps: Sequence[str], runner: shell.Runner,
           *, log_dir: str, repo_root: str = ".", wait_timeout_s: float = 6 * 3600) -> None:
  """Runs `steps` for `runs` [(run name, trainer argv)], one run after another on the same slice."""
  unknown = set(steps) - set(STEPS)
  if unknown:
    raise ValueError(f"--steps: unknown {sorted(unknown)}; expected a subset of {','.join(STEPS)}")
  try:
    if "create" in steps:
      create = vm.create_commands()
      runner(create[0])
      if vm.queued:
        wait_until_active(vm, runner, timeout_s=wait_timeout_s)
    if "install" in steps:
      tarball = None
      if not vm.repo_url:
        tarball = os.path.join(tempfile.gettempdir(), f"{vm.name}-{TARBALL}")  # outside the tree it packs
        if runner.dry_run:
          runner.note(f"pack the working tree of {os.path.abspath(repo_root)} into {tarball}")
        else:
          runner.note(f"packed {pack_working_tree(repo_root, tarball)} files into {tarball}")
      for command in vm.install_commands(tarball):
        runner(command)
    if "run" in steps:
      for run_name, train in runs:
        try:
          runner(vm.run_command(train, run_name))
        finally:
          if "logs" in steps:
            if not runner.dry_run:
              os.makedirs(log_dir, exist_ok=True)
            for command in vm.logs_commands(run_name, log_dir):
              runner(command, check=False)
  finally:
    if "delete" in steps:
      for command in vm.delete_commands():
        runner(command)


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("TPU VM")
  g.add_argument("--name", required=True, help="TPU (and queued resource) name")
  g.add_argument("--zone", required=True)
  g.add_argument("--project", default=None, help="default: gcloud's configured project")
  g.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16, v5p-64, v6e-8")
  g.add_argument("--version", default=None, help="TPU VM runtime (default: the generation's)")
  g.add_argument("--queued", action="store_true", help="create through a queued resource")
  g.add_argument("--spot", action="store_true")
  g.add_argument("--reserved", action="store_true")
  g.add_argument("--repo_url", default=None, help="git clone this on the workers instead of copying")
  g.add_argument("--branch", default=None)
  g.add_argument("--steps", default="create,install,run,logs",
                 help=f"comma-separated subset of {','.join(STEPS)} (add delete to free the slice)")
  g.add_argument("--log_dir", default=None, help="where worker logs land (default logs/NAME)")


def vm_from_args(args: argparse.Namespace) -> TpuVm:
  return TpuVm(name=args.name, zone=args.zone, project=args.project,
               slice=topologies.parse(args.accelerator_type), queued=args.queued, spot=args.spot,
               reserved=args.reserved, runtime_version=args.version, repo_url=args.repo_url,
               branch=args.branch)


def main(argv: Sequence[str] | None = None) -> None:
  parser = shell.base_parser(__doc__, "gs://BUCKET/... (required for multi-host)")
  add_arguments(parser)
  args, extra = parser.parse_known_args(argv)
  vm = vm_from_args(args)
  check_workdir(vm.slice, args.workdir)
  train = train_command(args.config, args.workdir, shell.check_override_flags(extra))
  runner = shell.Runner(args.dry_run)
  runner.note(f"{vm.slice.accelerator_type}: {vm.slice.chips} chips, {vm.slice.hosts} worker(s) of "
              f"{vm.slice.chips_per_host} chips, topology {vm.slice.topology}, runtime {vm.version}")
  launch(vm, [(os.path.basename(args.workdir.rstrip("/")) or "run", train)], args.steps.split(","),
         runner, log_dir=args.log_dir or os.path.join("logs", vm.name))


if __name__ == "__main__":
  main(sys.argv[1:])
