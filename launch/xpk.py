r"""GKE through XPK: one workload per run on an existing XPK cluster (v5e, v5p, v6e, TPU7x).

  python -m microverse_jax.launch.xpk --cluster=CLUSTER --project=PROJECT --zone=us-east5-a --accelerator_type=v5p-64 \
      --workload=mv-lora --config=configs/wan2_1.py:1.3b,lora --workdir=gs://BUCKET/runs/lora \
      --config.data.batch_size=32 [--docker_image=python:3.11 | --docker_image=REGISTRY/IMAGE --noinstall] \
      [--num_slices=N] [--max_restarts=N] [--steps=create,delete] [--dry_run] [--fit] [--config.optim.lr=2e-4 ...]

Before any xpk call the launcher checks the names, the config and its overrides, and the config
against the slice (launch/preflight.py; --fit: the step compiled here fits its HBM).

With a base image that is not in a registry (the default python:3.11) XPK builds this directory
(--script_dir) on top of it (`--base-docker-image`, at /app); the workload then installs
`-e ./bench -e '.[tpu]'` and runs the trainer on every host of the slice. A registry image
(gcr.io/..., *-docker.pkg.dev/...) is used as it is (`--docker-image`): build it with the repo inside
and pass --noinstall. GKE sets TPU_WORKER_HOSTNAMES on multi-host slices, so the trainer initialises
jax.distributed by itself. Logs go to Cloud Logging (`xpk workload list` shows the link).
Multislice: --num_slices=N (XPK's --num-slices) runs the workload on N slices of --accelerator_type
joined by the DCN; XPK (JobSet) sets MEGASCALE_* on every host and the trainer spans the slices with
the config's mesh (mesh.dcn_data / mesh.dcn_fsdp; default: the slices go on data). docs/multislice.md.
Preemption: the trainer is exec'd, so the pod's SIGTERM (forwarded by XPK's container script) reaches it; it
saves and exits 143, and --max_restarts=N (XPK's --max-restarts) lets the JobSet rerun it to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from typing import Sequence

from microverse_jax.launch import preflight, shell, topologies, tpu

STEPS = ("create", "delete")
_WORKLOAD = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
PRIORITIES = ("very-low", "low", "medium", "high", "very-high")
_REGISTRY = re.compile(r"([a-z0-9-]+\.)?gcr\.io/|([a-z0-9-]+-)?docker\.pkg\.dev/")


def is_registry_image(image: str) -> bool:
  """XPK runs registry images as they are; other images become the base it builds --script-dir onto."""
  return _REGISTRY.match(image) is not None


@dataclasses.dataclass(frozen=True)
class XpkWorkload:
  """One XPK workload and the commands that create and delete it."""

  cluster: str
  workload: str
  slice: topologies.TpuSlice
  project: str | None = None
  zone: str | None = None
  docker_image: str = "python:3.11"
  script_dir: str = "."
  install: bool = True
  priority: str | None = None
  num_slices: int = 1
  max_restarts: int = 0  # JobSet reruns after a failure; XPK restarts on exit codes 127-255, the trainer's 143 included

  def __post_init__(self):
    if not _WORKLOAD.fullmatch(self.workload):
      raise ValueError(
        f"--workload={self.workload!r}: XPK workload names are lowercase letters, "
        f"digits and '-', start with a letter, at most 40 characters"
      )
    if not self.cluster:
      raise ValueError("--cluster is required")
    shell.check_cluster(self.cluster)
    shell.check_project(self.project)
    shell.check_zone(self.zone)
    shell.check_name(
      self.docker_image, "--docker_image", _IMAGE, "expected an image name like python:3.11 or REGISTRY/IMAGE:TAG"
    )
    topologies.check_num_slices(self.num_slices)
    if self.max_restarts < 0:
      raise ValueError(f"--max_restarts={self.max_restarts}: expected a count >= 0")
    if self.priority is not None and self.priority not in PRIORITIES:
      raise ValueError(f"--priority={self.priority!r}: expected one of {', '.join(PRIORITIES)}")

  def _where(self) -> list[str]:
    return (
      [f"--cluster={self.cluster}"]
      + ([f"--project={self.project}"] if self.project else [])
      + ([f"--zone={self.zone}"] if self.zone else [])
    )

  def container_command(self, train: Sequence[str]) -> str:
    """What every host of the slice runs, in /app. The trainer replaces the shell (exec): XPK forwards
    the pod's SIGTERM to the command it started, and the trainer must get it to save."""
    parts = [shlex.join(["pip", "install", *shell.INSTALL_TARGETS])] if self.install else []
    parts.append(f"exec {shlex.join(train)}")
    return " && ".join(parts)

  def create_command(self, train: Sequence[str]) -> list[str]:
    image = (
      [f"--docker-image={self.docker_image}"]
      if is_registry_image(self.docker_image)
      else [f"--base-docker-image={self.docker_image}", f"--script-dir={self.script_dir}"]
    )
    return [
      "xpk",
      "workload",
      "create",
      *self._where(),
      f"--workload={self.workload}",
      f"--tpu-type={self.slice.accelerator_type}",
      f"--num-slices={self.num_slices}",
      *image,
      *([f"--priority={self.priority}"] if self.priority else []),
      *([f"--max-restarts={self.max_restarts}"] if self.max_restarts else []),
      f"--command={self.container_command(train)}",
    ]

  def delete_command(self) -> list[str]:
    return ["xpk", "workload", "delete", *self._where(), f"--workload={self.workload}"]


def train_command(config: str, workdir: str, overrides: Sequence[str] = ()) -> list[str]:
  return shell.train_argv(config, workdir, overrides, python="python")


def launch(workload: XpkWorkload, train: Sequence[str], steps: Sequence[str], runner: shell.Runner) -> None:
  unknown = set(steps) - set(STEPS)
  if unknown:
    raise ValueError(f"--steps: unknown {sorted(unknown)}; expected a subset of {','.join(STEPS)}")
  if "delete" in steps:  # a finished workload keeps its name until deleted: delete, then create
    runner(workload.delete_command(), check="create" not in steps)
  if "create" in steps:
    runner(workload.create_command(train))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("XPK (GKE)")
  g.add_argument("--cluster", required=True, help="an existing XPK cluster")
  g.add_argument("--project", default=None, help="default: gcloud's configured project")
  g.add_argument("--zone", default=None, help="the cluster's zone, e.g. us-east5-a")
  g.add_argument(
    "--accelerator_type",
    "--tpu_type",
    dest="accelerator_type",
    required=True,
    help="e.g. v5p-64, v6e-16, tpu7x-128 (--tpu_type: the old spelling)",
  )
  g.add_argument("--workload", required=True, help="workload name (a sweep appends -<index>)")
  g.add_argument(
    "--docker_image",
    default="python:3.11",
    help="a base image XPK builds --script_dir onto, or a registry image used as is",
  )
  g.add_argument("--script_dir", default=".", help="what XPK copies into /app")
  g.add_argument(
    "--install",
    dest="install",
    action="store_true",
    default=True,
    help="pip install the repo in the container first (the default)",
  )
  g.add_argument(
    "--noinstall",
    "--no_install",
    "--no-install",
    dest="install",
    action="store_false",
    help="run a prebuilt image as it is",
  )
  g.add_argument("--priority", default=None, choices=PRIORITIES, help="the workload's priority")
  g.add_argument("--num_slices", type=int, default=1, help="multislice: N slices joined by the DCN")
  g.add_argument(
    "--max_restarts",
    type=int,
    default=0,
    help="times the JobSet reruns the workload after a failure, a preemption (the trainer's exit 143) included",
  )
  g.add_argument("--steps", default="create", help=f"subset of {','.join(STEPS)}")


def workload_from_args(args: argparse.Namespace, name: str | None = None) -> XpkWorkload:
  return XpkWorkload(
    cluster=args.cluster,
    workload=name or args.workload,
    slice=topologies.parse(args.accelerator_type),
    project=args.project,
    zone=args.zone,
    docker_image=args.docker_image,
    script_dir=args.script_dir,
    install=args.install,
    priority=args.priority,
    num_slices=args.num_slices,
    max_restarts=args.max_restarts,
  )


def parser() -> argparse.ArgumentParser:
  p = shell.base_parser(
    __doc__, "gs://BUCKET/... (required for multi-host)", prog=shell.program(__spec__, "launch/xpk.py")
  )
  add_arguments(p)
  preflight.add_fit_arguments(p)
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args, extra = parser().parse_known_args(argv)
  workload = workload_from_args(args)
  tpu.check_workdir(workload.slice, args.workdir, workload.num_slices)
  overrides = shell.check_override_flags(extra)
  preflight.check(args.config, overrides, slice=workload.slice, num_slices=workload.num_slices, remote=True, fit=args)
  train = train_command(args.config, args.workdir, overrides)
  launch(workload, train, args.steps.split(","), shell.Runner(args.dry_run))


if __name__ == "__main__":
  shell.cli(main)
