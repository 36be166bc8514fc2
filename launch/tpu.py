r"""Cloud TPU VMs: create a slice (directly or as a queued resource), install this repo on every
worker, train on all workers at once, collect each worker's log, delete the slice.

  python -m microverse_jax.launch.tpu --name=mv-pod --zone=us-east5-a --project=PROJECT --accelerator_type=v5p-64 \
      --config=configs/wan2_1.py:1.3b,lora --workdir=gs://BUCKET/runs/lora --config.data.batch_size=32 \
      [--queued] [--num_slices=N] [--spot | --reserved] [--repo_url=URL --branch=B] [--include_untracked] \
      [--steps=create,install,run,logs,delete] [--dry_run] [--fit] [--config.optim.lr=2e-4 ...]

Before any gcloud call the launcher checks the names, the config and its overrides, and the config
against the slice (launch/preflight.py; --fit: the step compiled here fits its HBM). --dry_run prints
every command and runs none. Install copies the git-tracked files of the working tree to every worker
(--include_untracked adds untracked files that .gitignore does not exclude, and lists them), or clones
--repo_url there, then installs
`-e ./bench -e '.[tpu]'` into a Python 3.11 venv made with uv (TPU VM images ship Python 3.10).
A multi-host slice runs the trainer on every worker (`--worker=all`) with MICROVERSE_DISTRIBUTED=1,
which makes it call jax.distributed.initialize(); its workdir must be shared: gs://.
Multislice (--num_slices=N, N > 1; needs --queued): one queued resource with `--node-count=N` makes N
slices NAME-0 .. NAME-(N-1) joined by the DCN; the TPU runtime sets the MEGASCALE_* variables on every
worker, and the trainer spans the slices with the config's mesh (mesh.dcn_data / mesh.dcn_fsdp, default:
the slices go on data; docs/multislice.md). Commands then go to every node: `queued-resources ssh
--node=all --worker=all`, and logs come back as RUN.slice-<s>.worker-<i>.log.
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
import tarfile
import tempfile
import time
from typing import Sequence

from microverse_jax.launch import preflight, shell, topologies

REMOTE_DIR = "microverse-jax"  # on each worker, relative to the home directory
REMOTE_VENV = "microverse-venv"
REMOTE_LOGS = "microverse-logs"
TARBALL = "microverse-jax.tar.gz"
PYTHON = f"../{REMOTE_VENV}/bin/python"  # relative to REMOTE_DIR, where the trainer runs
STEPS = ("create", "install", "run", "logs", "delete")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def check_workdir(tpu: topologies.TpuSlice, workdir: str, num_slices: int = 1) -> None:
  """Multi-host slices (and multislice runs) need a workdir every worker sees (Orbax writes from all)."""
  if (tpu.multi_host or num_slices > 1) and not workdir.startswith("gs://"):
    where = f"{num_slices} x {tpu.accelerator_type}" if num_slices > 1 else tpu.accelerator_type
    raise ValueError(
      f"--workdir={workdir}: {where} has {tpu.hosts * num_slices} workers, which "
      f"need a shared gs:// workdir for checkpoints and metrics"
    )


@dataclasses.dataclass(frozen=True)
class TpuVm:
  """One TPU VM slice and the gcloud commands that manage it and run on it."""

  name: str
  zone: str
  slice: topologies.TpuSlice
  project: str | None = None
  queued: bool = False  # gcloud compute tpus queued-resources (waits for capacity)
  spot: bool = False
  reserved: bool = False
  runtime_version: str | None = None
  repo_url: str | None = None  # git clone URL; None: copy the local working tree
  branch: str | None = None
  python_version: str = "3.11"
  num_slices: int = 1  # multislice: a queued resource of num_slices nodes (slices)

  def __post_init__(self):
    if not _NAME.fullmatch(self.name):
      raise ValueError(
        f"--name={self.name!r}: TPU names are lowercase letters, digits and '-', "
        f"start with a letter, at most 63 characters"
      )
    if self.slice.runtime_version is None and self.runtime_version is None:
      raise ValueError(
        f"{self.slice.accelerator_type}: {self.slice.generation.name} is offered through "
        f"GKE only; launch it with launch/xpk.py"
      )
    if self.spot and self.reserved:
      raise ValueError("--spot and --reserved exclude each other")
    topologies.check_num_slices(self.num_slices)
    if self.num_slices > 1 and not self.queued:
      raise ValueError(
        f"--num_slices={self.num_slices}: multislice TPU VMs are created through a queued resource; add --queued"
      )
    if not self.zone:
      raise ValueError("--zone is required")
    shell.check_zone(self.zone)
    shell.check_project(self.project)

  @property
  def multislice(self) -> bool:
    return self.num_slices > 1

  @property
  def nodes(self) -> list[str]:
    """The TPU VM names: the slice itself, or a multislice queued resource's NAME-0 .. NAME-(N-1)."""
    return [f"{self.name}-{i}" for i in range(self.num_slices)] if self.multislice else [self.name]

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
        [
          "gcloud",
          "compute",
          "tpus",
          "queued-resources",
          "create",
          self.name,
          *(
            [f"--node-count={self.num_slices}", f"--node-prefix={self.name}"]
            if self.multislice
            else [f"--node-id={self.name}"]
          ),
          *self._where(),
          f"--accelerator-type={self.slice.accelerator_type}",
          f"--runtime-version={self.version}",
          *self._capacity(),
        ],
        self.queued_state_command(),
      ]
    return [
      [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        self.name,
        *self._where(),
        f"--accelerator-type={self.slice.accelerator_type}",
        f"--version={self.version}",
        *self._capacity(),
      ]
    ]

  def queued_state_command(self) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "describe",
      self.name,
      *self._where(),
      "--format=value(state.state)",
    ]

  def delete_commands(self) -> list[list[str]]:
    if self.queued:  # --force also deletes the TPU VM the queued resource made
      return [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self._where(), "--force", "--quiet"]
      ]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self._where(), "--quiet"]]

  # ------------------------------------------------------------------ on the workers
  def ssh(self, script: str, worker: str = "all") -> list[str]:
    """Runs `script` in the login shell (bash) on `worker` ("all" or an index); all at once. Multislice:
    on that worker of every slice (`queued-resources ssh --node=all`)."""
    if self.multislice:
      return [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "ssh",
        self.name,
        *self._where(),
        "--node=all",
        f"--worker={worker}",
        f"--command={script}",
      ]
    return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      self.name,
      *self._where(),
      f"--worker={worker}",
      f"--command={script}",
    ]

  def scp(self, source: str, destination: str, worker: str = "all") -> list[str]:
    """Copies between here and workers; remote paths are NODE:path (relative to the home directory)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", source, destination, *self._where(), f"--worker={worker}"]

  def install_commands(self, tarball: str | None = None) -> list[list[str]]:
    """Copy (tarball of the working tree) or clone the repo on every worker, then pip install it."""
    uv = '"$HOME/.local/bin/uv"'
    setup = (
      f"cd {REMOTE_DIR} && curl -LsSf https://astral.sh/uv/install.sh | sh && "
      f'{uv} venv --allow-existing --python={shlex.quote(self.python_version)} "$HOME/{REMOTE_VENV}" && '
      f'{uv} pip install --python="$HOME/{REMOTE_VENV}/bin/python" {shlex.join(shell.INSTALL_TARGETS)}'
    )
    if self.repo_url:
      branch = ["--branch", self.branch] if self.branch else []
      clone = shlex.join(["git", "clone", "--depth=1", *branch, "--", self.repo_url, REMOTE_DIR])
      return [self.ssh(f"set -euo pipefail; rm -rf {REMOTE_DIR} && {clone} && {setup}")]
    if tarball is None:
      raise ValueError("install: pass the working-tree tarball, or set --repo_url")
    fetch = f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf {TARBALL} -C {REMOTE_DIR} && rm -f {TARBALL}"
    return [
      *(self.scp(tarball, f"{node}:{TARBALL}") for node in self.nodes),
      self.ssh(f"set -euo pipefail; {fetch} && {setup}"),
    ]

  def run_command(self, train: Sequence[str], run_name: str) -> list[str]:
    """The trainer on every worker, its output teed to ~/microverse-logs/RUN.log; exits with its status."""
    env = "MICROVERSE_DISTRIBUTED=1 " if self.slice.multi_host or self.multislice else ""
    log = shlex.quote(f"{shell.check_run_name(run_name)}.log")
    script = (
      f"set -o pipefail; mkdir -p ~/{REMOTE_LOGS} && cd {REMOTE_DIR} && "
      f"{env}{shlex.join(train)} 2>&1 | tee ~/{REMOTE_LOGS}/{log}"
    )
    return self.ssh(script)

  def logs_commands(self, run_name: str, log_dir: str) -> list[list[str]]:
    """One copy per worker (their logs share a name): LOG_DIR/RUN.worker-<i>.log; multislice:
    LOG_DIR/RUN.slice-<s>.worker-<i>.log."""
    shell.check_run_name(run_name)
    return [
      self.scp(
        f"{node}:{REMOTE_LOGS}/{run_name}.log",
        os.path.join(log_dir, f"{run_name}.{f'slice-{s}.' if self.multislice else ''}worker-{i}.log"),
        worker=str(i),
      )
      for s, node in enumerate(self.nodes)
      for i in self.slice.workers
    ]


def train_command(config: str, workdir: str, overrides: Sequence[str] = ()) -> list[str]:
  """The trainer command each worker runs (from ~/microverse-jax, with the venv's Python)."""
  return shell.train_argv(config, workdir, overrides, python=PYTHON)


@dataclasses.dataclass(frozen=True)
class WorkingTree:
  """The files install uploads: git-tracked ones, plus untracked-but-not-ignored ones on request."""

  tracked: list[str]
  untracked: list[str]

  @property
  def files(self) -> list[str]:
    return self.tracked + self.untracked


def list_working_tree(repo_root: str, include_untracked: bool = False) -> WorkingTree:
  """Paths relative to `repo_root` of the files to upload (existing regular files or links only)."""

  def ls(*flags: str) -> list[str]:
    try:
      out = subprocess.run(
        ["git", "-C", repo_root, "ls-files", "-z", *flags], check=True, capture_output=True, timeout=60
      ).stdout.decode()
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
      raise ValueError(
        f"{os.path.abspath(repo_root)} is not a git work tree (or git is missing), so "
        f"install cannot tell what to upload: launch from the repo root, or pass --repo_url"
      ) from e
    return sorted(
      f
      for f in out.split("\0")
      if f and os.path.lexists(os.path.join(repo_root, f)) and not os.path.isdir(os.path.join(repo_root, f))
    )

  tracked = ls("--cached")
  untracked = ls("--others", "--exclude-standard") if include_untracked else []
  return WorkingTree(tracked, [f for f in untracked if f not in set(tracked)])


def pack_working_tree(repo_root: str, tree: WorkingTree) -> str:
  """Tars `tree`'s files into a new private temp file (mode 0600, outside the tree); returns its path."""
  fd, path = tempfile.mkstemp(prefix="microverse-jax-", suffix=".tar.gz")
  try:
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
      for name in tree.files:
        tar.add(os.path.join(repo_root, name), arcname=name, recursive=False)
  except BaseException:
    os.remove(path)
    raise
  return path


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


def launch(
  vm: TpuVm,
  runs: Sequence[tuple[str, list[str]]],
  steps: Sequence[str],
  runner: shell.Runner,
  *,
  log_dir: str,
  repo_root: str = ".",
  wait_timeout_s: float = 6 * 3600,
  include_untracked: bool = False,
  needed: Sequence[str] = (),
) -> None:
  """Runs `steps` for `runs` [(run name, trainer argv)], one run after another on the same slice.
  What install uploads is settled before the slice is created; `needed` files (the config) must be in it."""
  unknown = set(steps) - set(STEPS)
  if unknown:
    raise ValueError(f"--steps: unknown {sorted(unknown)}; expected a subset of {','.join(STEPS)}")
  for run_name, _ in runs:
    shell.check_run_name(run_name)
  tree = None
  if "install" in steps and not vm.repo_url:
    tree = list_working_tree(repo_root, include_untracked)
    missing = [f for f in map(os.path.normpath, needed) if f not in tree.files]
    if missing:
      hint = "" if include_untracked else " (commit them, or pass --include_untracked)"
      raise ValueError(f"{', '.join(missing)}: not among the files install uploads{hint}")
    runner.note(
      f"install uploads {len(tree.tracked)} tracked files of {os.path.abspath(repo_root)}"
      + (f" and {len(tree.untracked)} untracked ones: {', '.join(tree.untracked)}" if tree.untracked else "")
    )
  try:
    if "create" in steps:
      create = vm.create_commands()
      runner(create[0])
      if vm.queued:
        wait_until_active(vm, runner, timeout_s=wait_timeout_s)
    if "install" in steps:
      if tree is None:
        for command in vm.install_commands():
          runner(command)
      elif runner.dry_run:
        runner.note("pack them into a private temp file (mode 0600), removed after the copy")
        for command in vm.install_commands(os.path.join(tempfile.gettempdir(), "microverse-jax-XXXX.tar.gz")):
          runner(command)
      else:
        tarball = pack_working_tree(repo_root, tree)
        try:
          for command in vm.install_commands(tarball):
            runner(command)
        finally:
          os.remove(tarball)
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
  g.add_argument("--zone", required=True, help="e.g. us-east5-a")
  g.add_argument("--project", default=None, help="default: gcloud's configured project")
  g.add_argument(
    "--accelerator_type",
    "--tpu_type",
    dest="accelerator_type",
    required=True,
    help="e.g. v5litepod-16, v5p-64, v6e-8 (--tpu_type: the old spelling)",
  )
  g.add_argument("--version", default=None, help="TPU VM runtime (default: the generation's)")
  g.add_argument("--queued", action="store_true", help="create through a queued resource")
  g.add_argument(
    "--num_slices",
    type=int,
    default=1,
    help="multislice: N slices of --accelerator_type joined by the DCN (needs --queued)",
  )
  g.add_argument("--spot", action="store_true", help="spot capacity")
  g.add_argument("--reserved", action="store_true", help="reserved capacity")
  g.add_argument("--repo_url", default=None, help="git clone this on the workers instead of copying")
  g.add_argument("--branch", default=None, help="with --repo_url: the branch or tag to clone")
  g.add_argument(
    "--include_untracked",
    action="store_true",
    help="also upload untracked files that .gitignore does not exclude (listed first)",
  )
  g.add_argument(
    "--steps",
    default="create,install,run,logs",
    help=f"comma-separated subset of {','.join(STEPS)} (add delete to free the slice)",
  )
  g.add_argument("--log_dir", default=None, help="where worker logs land (default logs/NAME)")


def vm_from_args(args: argparse.Namespace) -> TpuVm:
  return TpuVm(
    name=args.name,
    zone=args.zone,
    project=args.project,
    slice=topologies.parse(args.accelerator_type),
    queued=args.queued,
    spot=args.spot,
    reserved=args.reserved,
    runtime_version=args.version,
    repo_url=args.repo_url,
    branch=args.branch,
    num_slices=args.num_slices,
  )


def parser() -> argparse.ArgumentParser:
  p = shell.base_parser(
    __doc__, "gs://BUCKET/... (required for multi-host)", prog=shell.program(__spec__, "launch/tpu.py")
  )
  add_arguments(p)
  preflight.add_fit_arguments(p)
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args, extra = parser().parse_known_args(argv)
  vm = vm_from_args(args)
  check_workdir(vm.slice, args.workdir, vm.num_slices)
  run_name = shell.run_name(args.workdir)
  overrides = shell.check_override_flags(extra)
  config = preflight.check_config_file(args.config, remote=True)
  preflight.check(args.config, overrides, slice=vm.slice, num_slices=vm.num_slices, fit=args)
  train = train_command(args.config, args.workdir, overrides)
  runner = shell.Runner(args.dry_run)
  runner.note(
    f"{vm.slice.accelerator_type}: {vm.slice.chips} chips, {vm.slice.hosts} worker(s) of "
    f"{vm.slice.chips_per_host} chips, topology {vm.slice.topology}, runtime {vm.version}"
    + (
      f"; x {vm.num_slices} slices over the DCN ({vm.num_slices * vm.slice.chips} chips: nodes {', '.join(vm.nodes)})"
      if vm.multislice
      else ""
    )
  )
  launch(
    vm,
    [(run_name, train)],
    args.steps.split(","),
    runner,
    log_dir=args.log_dir or os.path.join("logs", vm.name),
    include_untracked=args.include_untracked,
    needed=[config],
  )


if __name__ == "__main__":
  shell.cli(main)
