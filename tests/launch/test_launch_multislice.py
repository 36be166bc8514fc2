"""Multislice launches in --dry-run: queued resources with --node-count, XPK --num-slices, preflight
of the mesh against slices x chips."""

from __future__ import annotations

import os
import shlex

import pytest

from microverse_jax.launch import preflight, topologies, tpu, xpk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/wan2_1.py:1.3b,lora"
WORKDIR = "gs://bucket/runs/lora"
BATCH = "--config.data.batch_size=64"  # 64 data shards on 2 x v5p-64 (2 x 32 chips)


def _commands(text: str) -> list[list[str]]:
  return [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]


def _flag(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def test_tpu_multislice_dry_run_queues_n_nodes_and_runs_on_every_worker_of_every_slice(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(tpu.tempfile, "tempdir", str(tmp_path))
  tpu.main(
    [
      "--name=mv-ms",
      "--zone=us-east5-a",
      "--project=my-proj",
      "--accelerator_type=v5p-64",
      "--queued",
      "--num_slices=2",
      "--spot",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--steps=create,install,run,logs,delete",
      f"--log_dir={tmp_path}/logs",
      "--dry_run",
      BATCH,
    ]
  )
  out = capsys.readouterr().out
  commands = _commands(out)
  assert not os.listdir(tmp_path)
  create, describe, scp0, scp1, install, run, *logs, delete = commands

  assert create[3:6] == ["queued-resources", "create", "mv-ms"]
  assert _flag(create, "--node-count") == "2" and _flag(create, "--node-prefix") == "mv-ms"
  assert not any(a.startswith("--node-id") for a in create)  # --node-id and --node-count exclude
  assert _flag(create, "--accelerator-type") == "v5p-64" and "--spot" in create
  assert _flag(create, "--runtime-version") == "v2-alpha-tpuv5"
  assert describe[3:6] == ["queued-resources", "describe", "mv-ms"]

  # The tarball goes to each slice's nodes; install and run go to every worker of every node at once.
  assert [c[6] for c in (scp0, scp1)] == ["mv-ms-0:microverse-jax.tar.gz", "mv-ms-1:microverse-jax.tar.gz"]
  assert all(_flag(c, "--worker") == "all" for c in (scp0, scp1))
  for c in (install, run):
    assert c[3:6] == ["queued-resources", "ssh", "mv-ms"]
    assert _flag(c, "--node") == "all" and _flag(c, "--worker") == "all"
  assert "tar xzf microverse-jax.tar.gz" in _flag(install, "--command")
  train = shlex.join(
    ["../microverse-venv/bin/python", "-m", "microverse_jax.train", f"--config={CONFIG}", f"--workdir={WORKDIR}", BATCH]
  )
  assert f"MICROVERSE_DISTRIBUTED=1 {train} 2>&1 | tee ~/microverse-logs/lora.log" in _flag(run, "--command")

  # Logs: 2 slices x 8 workers, named by both.
  assert len(logs) == 16
  assert [c[5] for c in logs] == [f"mv-ms-{s}:microverse-logs/lora.log" for s in range(2) for _ in range(8)]
  assert [c[6] for c in logs] == [f"{tmp_path}/logs/lora.slice-{s}.worker-{i}.log" for s in range(2) for i in range(8)]
  assert delete[3:6] == ["queued-resources", "delete", "mv-ms"] and "--force" in delete
  assert "x 2 slices over the DCN (64 chips: nodes mv-ms-0, mv-ms-1)" in out


def test_tpu_multislice_even_of_single_host_slices_initialises_distributed():
  vm = tpu.TpuVm(name="mv-ms", zone="us-east5-a", slice=topologies.parse("v6e-8"), queued=True, num_slices=4)
  assert vm.nodes == ["mv-ms-0", "mv-ms-1", "mv-ms-2", "mv-ms-3"]
  assert "MICROVERSE_DISTRIBUTED=1 " in _flag(vm.run_command(["python", "-m", "x"], "r"), "--command")
  single = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v6e-8"), queued=True)
  assert single.nodes == ["mv"] and _flag(single.create_commands()[0], "--node-id") == "mv"
  assert "MICROVERSE_DISTRIBUTED" not in _flag(single.run_command(["python"], "r"), "--command")


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(num_slices=2), "add --queued"),
    (dict(num_slices=0, queued=True), "positive count"),
  ],
)
def test_tpu_multislice_rejects_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-8"), **kwargs)


def test_tpu_multislice_of_single_host_slices_needs_a_gs_workdir(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ValueError, match="2 x v6e-8 has 2 workers"):
    tpu.main(
      [
        "--name=mv",
        "--zone=us-east5-a",
        "--accelerator_type=v6e-8",
        "--queued",
        "--num_slices=2",
        f"--config={CONFIG}",
        "--workdir=/tmp/local",
        "--dry_run",
      ]
    )


def test_xpk_num_slices(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  xpk.main(
    [
      "--cluster=mv-cluster",
      "--accelerator_type=v5p-64",
      "--num_slices=2",
      "--workload=mv-ms",
      f"--config={CONFIG}",
      f"--workdir={WORKDIR}",
      "--dry_run",
      BATCH,
    ]
  )
  (create,) = _commands(capsys.readouterr().out)
  assert create[:3] == ["xpk", "workload", "create"]
  assert _flag(create, "--tpu-type") == "v5p-64" and _flag(create, "--num-slices") == "2"
  with pytest.raises(ValueError, match="positive count"):
    xpk.XpkWorkload(cluster="c", workload="w", slice=topologies.parse("v5p-8"), num_slices=0)


def test_preflight_checks_the_mesh_and_batch_against_slices_times_chips(monkeypatch):
  monkeypatch.chdir(REPO)
  v5p_64 = topologies.parse("v5p-64")
  # 32 data shards fit one slice, not two (64 shards): the batch must split over slices x chips.
  preflight.check(CONFIG, ["--config.data.batch_size=32"], slice=v5p_64)
  with pytest.raises(preflight.PreflightError, match=r"2 x v5p-64 \(64 devices\).*64 data shards"):
    preflight.check(CONFIG, ["--config.data.batch_size=32"], slice=v5p_64, num_slices=2)
  config = preflight.check(CONFIG, [BATCH], slice=v5p_64, num_slices=2)
  from microverse_jax import plans

  shape = plans.resolve(config, 64, 2).mesh_shape
  assert dict(shape) == {"data": 2, "fsdp": 32, "tensor": 1, "context": 1} and shape.dcn["data"] == 2
  with pytest.raises(preflight.PreflightError, match=r"3 x v5p-64 \(96 devices\).*96 data shards"):
    preflight.check(CONFIG, [BATCH], slice=v5p_64, num_slices=3)
