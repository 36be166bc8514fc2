"""Launchers in --dry-run: the exact gcloud / xpk / local commands, checked without running any."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tarfile

import pytest

from microverse_jax.launch import local, shell, topologies, tpu, xpk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/wan2_1.py:1.3b,lora"
WORKDIR = "gs://bucket/runs/lora"
BATCH = "--config.data.batch_size=32"  # 32 data shards on v5p-64: preflight refuses the default 8


def _commands(text: str) -> list[list[str]]:
  """Printed lines -> argv lists (comments dropped); every line must parse as shell."""
  return [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]


def _flag(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


# ---------------------------------------------------------------------------- topologies
@pytest.mark.parametrize(
  "name, canonical, chips, hosts, topology, runtime",
  [
    ("v5p-8", "v5p-8", 4, 1, "2x2x1", "v2-alpha-tpuv5"),
    ("v5p-64", "v5p-64", 32, 8, "2x4x4", "v2-alpha-tpuv5"),
    ("v5p-128", "v5p-128", 64, 16, "4x4x4", "v2-alpha-tpuv5"),
    ("v5litepod-8", "v5litepod-8", 8, 1, "2x4", "v2-alpha-tpuv5-lite"),
    ("v5e-16", "v5litepod-16", 16, 4, "4x4", "v2-alpha-tpuv5-lite"),
    ("v6e-1", "v6e-1", 1, 1, "1x1", "v2-alpha-tpuv6e"),
    ("v6e-8", "v6e-8", 8, 1, "2x4", "v2-alpha-tpuv6e"),
    ("v6e-256", "v6e-256", 256, 64, "16x16", "v2-alpha-tpuv6e"),
    ("tpu7x-8", "tpu7x-8", 4, 1, "2x2x1", None),
    ("v7x-64", "tpu7x-64", 32, 8, "2x4x4", None),
    ("v4-8", "v4-8", 4, 1, "2x2x1", "tpu-ubuntu2204-base"),
    ("v4-32", "v4-32", 16, 4, "2x2x4", "tpu-ubuntu2204-base"),
  ],
)
def test_topologies(name, canonical, chips, hosts, topology, runtime):
  s = topologies.parse(name)
  assert (s.accelerator_type, s.chips, s.hosts, s.topology, s.runtime_version) == (
    canonical,
    chips,
    hosts,
    topology,
    runtime,
  )
  assert s.chips_per_host * s.hosts == s.chips and s.multi_host == (hosts > 1)


@pytest.mark.parametrize("name", ["v5p-7", "v5p-12", "v6e-3", "v9-8", "tpu", "v3-8", "v4-6"])
def test_unknown_accelerator_types_are_rejected(name):
  with pytest.raises(ValueError, match="accelerator type"):
    topologies.parse(name)


# ---------------------------------------------------------------------------- TPU VM
def test_v5p_64_dry_run_names_every_worker_and_the_exact_training_command(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(tpu.tempfile, "tempdir", str(tmp_path))
  tpu.main(
    [
      "--name=mv-pod",
      "--zone=us-east5-a",
      "--project=my-proj",
      "--accelerator_type=v5p-64",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--steps=create,install,run,logs,delete",
      f"--log_dir={tmp_path}/logs",
      "--dry_run",
      "--config.optim.lr=0.0002",
      BATCH,
    ]
  )
  out = capsys.readouterr().out
  commands = _commands(out)
  assert not os.listdir(tmp_path)  # a dry run writes nothing (no tarball, no log dir)
  assert all(c[:3] == ["gcloud", "compute", "tpus"] for c in commands)
  create, scp_tarball, install, run, *logs, delete = commands

  assert create[3:6] == ["tpu-vm", "create", "mv-pod"]
  assert _flag(create, "--accelerator-type") == "v5p-64"
  assert _flag(create, "--version") == "v2-alpha-tpuv5"
  assert _flag(create, "--zone") == "us-east5-a" and _flag(create, "--project") == "my-proj"

  # Install: the working tree goes to all workers, then pip install -e ./bench -e .[tpu] on each.
  assert scp_tarball[3:5] == ["tpu-vm", "scp"] and _flag(scp_tarball, "--worker") == "all"
  assert scp_tarball[6] == "mv-pod:microverse-jax.tar.gz"
  assert install[3:6] == ["tpu-vm", "ssh", "mv-pod"] and _flag(install, "--worker") == "all"
  setup = _flag(install, "--command")
  assert "tar xzf microverse-jax.tar.gz -C microverse-jax" in setup
  assert 'pip install --python="$HOME/microverse-venv/bin/python" -e ./bench -e \'.[tpu]\'' in setup
  assert "--python=3.11" in setup

  # Run: all 8 workers at once, the exact trainer command, jax.distributed switched on.
  assert run[3:6] == ["tpu-vm", "ssh", "mv-pod"] and _flag(run, "--worker") == "all"
  expected = shlex.join(
    [
      "../microverse-venv/bin/python",
      "-m",
      "microverse_jax.train",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--config.optim.lr=0.0002",
      BATCH,
    ]
  )
  script = _flag(run, "--command")
  assert f"MICROVERSE_DISTRIBUTED=1 {expected} 2>&1 | tee ~/microverse-logs/lora.log" in script
  assert "set -o pipefail" in script  # the ssh exit status is the trainer's, not tee's

  # Logs: one copy per worker, each named; then the slice is deleted.
  assert [_flag(c, "--worker") for c in logs] == [str(i) for i in range(8)]
  assert [c[6] for c in logs] == [f"{tmp_path}/logs/lora.worker-{i}.log" for i in range(8)]
  assert all(c[5] == "mv-pod:microverse-logs/lora.log" for c in logs)
  assert delete[3:6] == ["tpu-vm", "delete", "mv-pod"] and "--quiet" in delete
  assert "v5p-64: 32 chips, 8 worker(s) of 4 chips, topology 2x4x4" in out


def test_queued_resource_commands():
  vm = tpu.TpuVm(name="mv-q", zone="us-central2-b", slice=topologies.parse("v6e-16"), queued=True, spot=True)
  create, describe = vm.create_commands()
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "mv-q"]
  assert _flag(create, "--node-id") == "mv-q" and _flag(create, "--accelerator-type") == "v6e-16"
  assert _flag(create, "--runtime-version") == "v2-alpha-tpuv6e" and "--spot" in create
  assert describe[3:6] == ["queued-resources", "describe", "mv-q"]
  assert _flag(describe, "--format") == "value(state.state)"
  (delete,) = vm.delete_commands()
  assert delete[3:6] == ["queued-resources", "delete", "mv-q"] and "--force" in delete


def test_single_host_run_does_not_initialise_distributed():
  vm = tpu.TpuVm(name="mv-one", zone="us-east5-a", slice=topologies.parse("v6e-8"))
  run = vm.run_command(tpu.train_command("configs/microsim_tiny.py", "/tmp/w"), "w")
  assert "MICROVERSE_DISTRIBUTED" not in _flag(run, "--command") and _flag(run, "--worker") == "all"
  assert len(vm.logs_commands("w", "logs")) == 1


def test_git_clone_install():
  vm = tpu.TpuVm(
    name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"), repo_url="https://example.org/r.git", branch="dev"
  )
  (install,) = vm.install_commands()
  assert "git clone --depth=1 --branch dev -- https://example.org/r.git microverse-jax" in _flag(install, "--command")


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(name="Bad_Name"), "lowercase"),
    (dict(accelerator="tpu7x-8"), "GKE only"),
    (dict(spot=True, reserved=True), "exclude each other"),
  ],
)
def test_tpu_vm_rejects_bad_settings(kwargs, message):
  accelerator = kwargs.pop("accelerator", "v5p-8")
  with pytest.raises(ValueError, match=message):
    tpu.TpuVm(**{"name": "mv", "zone": "z", "slice": topologies.parse(accelerator), **kwargs})


def test_multi_host_needs_a_gs_workdir():
  with pytest.raises(ValueError, match="shared gs:// workdir"):
    tpu.main(
      [
        "--name=mv",
        "--zone=us-east5-a",
        "--accelerator_type=v5p-64",
        f"--config={CONFIG}",
        "--workdir=/tmp/local",
        "--dry_run",
      ]
    )
  tpu.check_workdir(topologies.parse("v5p-8"), "/tmp/local")  # one host: its own disk is fine


def test_only_config_overrides_pass_through():
  with pytest.raises(ValueError, match="--config.KEY=VALUE"):
    tpu.main(
      [
        "--name=mv",
        "--zone=us-east5-a",
        "--accelerator_type=v5p-8",
        f"--config={CONFIG}",
        "--workdir=/tmp/w",
        "--dry_run",
        "--learning_rate=3",
      ]
    )


class _FailingRunner(shell.Runner):
  """Records commands; the training ssh fails like a crashed run would."""

  def __call__(self, argv, **kwargs):
    self.show(argv)
    if any(a.startswith("--command=") and "microverse_jax.train" in a for a in argv):
      raise RuntimeError("training failed")


def test_logs_and_delete_still_run_when_training_fails(tmp_path):
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5litepod-16"), repo_url="https://x/r.git")
  runner = _FailingRunner(False, out=io.StringIO())
  with pytest.raises(RuntimeError, match="training failed"):
    tpu.launch(
      vm,
      [("run", tpu.train_command(CONFIG, WORKDIR))],
      ["install", "run", "logs", "delete"],
      runner,
      log_dir=str(tmp_path / "logs"),
    )
  kinds = [c[4] for c in runner.history]
  assert kinds == ["ssh", "ssh", "scp", "scp", "scp", "scp", "delete"]  # install, run, 4 workers' logs, delete


def test_pack_working_tree_takes_tracked_files_and_untracked_ones_on_request(tmp_path):
  repo = tmp_path / "repo"
  repo.mkdir()
  git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, timeout=30)
  git("init", "-q")
  (repo / ".gitignore").write_text("*.log\nworkdir/\n")
  (repo / "tracked.py").write_text("x = 1\n")
  git("add", ".gitignore", "tracked.py")
  (repo / "untracked.py").write_text("y = 2\n")
  (repo / "debug.log").write_text("ignored\n")
  (repo / "workdir").mkdir()
  (repo / "workdir" / "ckpt").write_text("ignored\n")
  for include_untracked, expected in (
    (False, [".gitignore", "tracked.py"]),
    (True, [".gitignore", "tracked.py", "untracked.py"]),
  ):
    tree = tpu.list_working_tree(str(repo), include_untracked)
    assert tree.untracked == (["untracked.py"] if include_untracked else [])
    tarball = tpu.pack_working_tree(str(repo), tree)
    with tarfile.open(tarball) as tar:
      assert sorted(tar.getnames()) == expected
    assert os.stat(tarball).st_mode & 0o777 == 0o600
    os.remove(tarball)


def test_install_outside_a_git_tree_says_what_to_do(tmp_path):
  with pytest.raises(ValueError, match="not a git work tree.*--repo_url"):
    tpu.list_working_tree(str(tmp_path))


# ---------------------------------------------------------------------------- XPK
def test_xpk_command_is_well_formed(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  xpk.main(
    [
      "--cluster=mv-cluster",
      "--project=my-proj",
      "--zone=us-east5-a",
      "--accelerator_type=v5p-64",
      "--workload=mv-lora",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--dry_run",
      "--config.optim.lr=0.0002",
      BATCH,
    ]
  )
  (create,) = _commands(capsys.readouterr().out)
  assert create[:3] == ["xpk", "workload", "create"]
  assert all(a.startswith("--") and "=" in a for a in create[3:])  # --flag=value only
  assert _flag(create, "--cluster") == "mv-cluster" and _flag(create, "--workload") == "mv-lora"
  assert _flag(create, "--project") == "my-proj" and _flag(create, "--zone") == "us-east5-a"
  assert _flag(create, "--tpu-type") == "v5p-64" and _flag(create, "--num-slices") == "1"
  assert _flag(create, "--base-docker-image") == "python:3.11" and _flag(create, "--script-dir") == "."
  assert not any(a.startswith("--docker-image=") for a in create)  # that would skip building the repo in
  train = shlex.join(
    [
      "python",
      "-m",
      "microverse_jax.train",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--config.optim.lr=0.0002",
      BATCH,
    ]
  )
  assert _flag(create, "--command") == f"pip install -e ./bench -e '.[tpu]' && exec {train}"


@pytest.mark.parametrize(
  "image, registry",
  [
    ("python:3.11", False),
    ("ubuntu:22.04", False),
    ("gcr.io/p/mv:1", True),
    ("us.gcr.io/p/mv", True),
    ("us-docker.pkg.dev/p/r/mv:1", True),
    ("europe-west4-docker.pkg.dev/p/r/mv", True),
  ],
)
def test_registry_images(image, registry):
  assert xpk.is_registry_image(image) == registry


def test_xpk_prebuilt_image_delete_and_v7x():
  w = xpk.XpkWorkload(
    cluster="c",
    workload="mv-7x",
    slice=topologies.parse("v7x-128"),
    docker_image="us-docker.pkg.dev/p/r/mv:1",
    install=False,
    priority="high",
  )
  train = xpk.train_command("configs/wan2_1.py:14b,full", WORKDIR)
  create = w.create_command(train)
  assert _flag(create, "--tpu-type") == "tpu7x-128" and _flag(create, "--priority") == "high"
  assert _flag(create, "--docker-image") == "us-docker.pkg.dev/p/r/mv:1"
  assert not any(a.startswith(("--script-dir", "--base-docker-image")) for a in create)
  assert _flag(create, "--command") == f"exec {shlex.join(train)}"
  runner = shell.Runner(True, out=io.StringIO())
  xpk.launch(w, train, ["delete", "create"], runner)
  assert [c[2] for c in runner.history] == ["delete", "create"]
  with pytest.raises(ValueError, match="at most 40"):
    xpk.XpkWorkload(cluster="c", workload="x" * 41, slice=topologies.parse("v5p-8"))


# ---------------------------------------------------------------------------- local
MESH = ["--config.mesh.data=4", "--config.mesh.tensor=2"]  # 8 devices, batch 4 over 4 data shards


def test_local_dry_run_prints_one_command_per_process(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  workdir = str(tmp_path / "w")
  local.main(
    [
      "--config=configs/microsim_tiny.py:test",
      f"--workdir={workdir}",
      "--num_processes=2",
      "--devices_per_process=4",
      "--dry_run",
      "--config.train.num_steps=3",
      *MESH,
    ]
  )
  lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
  assert len(lines) == 2 and not os.path.exists(workdir)
  envs = [dict(w.split("=", 1) for w in shlex.split(l) if "=" in w and w.split("=")[0].isupper()) for l in lines]
  assert [e["JAX_PROCESS_ID"] for e in envs] == ["0", "1"]
  assert envs[0]["JAX_COORDINATOR_ADDRESS"] == envs[1]["JAX_COORDINATOR_ADDRESS"]
  assert envs[0]["JAX_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
  assert all(e["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=4") for e in envs)
  assert lines[0].endswith(
    shlex.join(
      [
        sys.executable,
        "-m",
        "microverse_jax.train",
        "--config=configs/microsim_tiny.py:test",
        f"--workdir={workdir}",
        "--config.train.num_steps=3",
        *MESH,
      ]
    )
  )


def test_local_preflight_checks_the_mesh_against_the_processes_devices(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ValueError, match="batch_size=4 must split .* 8 data shards"):  # 4 rows, 8 devices
    local.main(
      [
        "--config=configs/microsim_tiny.py:test",
        "--workdir=/tmp/w",
        "--num_processes=2",
        "--devices_per_process=4",
        "--dry_run",
      ]
    )
