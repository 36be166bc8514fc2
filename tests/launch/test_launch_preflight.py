"""Preflight before cloud spend (issue 18, items 1, 2 and 10): a bad config, override or slice fit stops a
launcher before its first gcloud / xpk call (stubs on PATH record every call); the install line the
workers really run brings gcsfs and what TensorBoard needs for gs://; one flag convention, with --help
showing real program names and defaults."""

from __future__ import annotations

import configparser
import inspect
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from microverse_jax.launch import local, preflight, shell, sweep, topologies, tpu, xpk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "configs/microsim_tiny.py:test"
TPU = [
  "--name=mv",
  "--zone=us-east5-a",
  "--project=my-proj",
  "--accelerator_type=v5p-8",
  "--workdir=gs://b/runs/r",
  "--steps=create",
]
XPK = ["--cluster=mv-cluster", "--accelerator_type=v5p-8", "--workload=mv", "--workdir=gs://b/runs/r"]


@pytest.fixture
def cloud(tmp_path, monkeypatch):
  """`gcloud` and `xpk` stubs first on PATH; calls() lists the commands they were given."""
  bin_dir, record = tmp_path / "bin", tmp_path / "calls.txt"
  bin_dir.mkdir()
  for name in ("gcloud", "xpk"):
    stub = bin_dir / name
    stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.chdir(REPO)

  class Cloud:
    env = {**os.environ}

    @staticmethod
    def calls() -> list[str]:
      return record.read_text().splitlines() if record.exists() else []

  return Cloud


def test_stubs_see_a_launch_that_passes_preflight(cloud, tmp_path):
  tpu.main([*TPU, f"--config={TINY}"])
  xpk.main([*XPK, f"--config={TINY}"])
  sweep.main(
    [
      "--config=configs/wan2_1.py:1.3b,full",
      f"--workdir_root={tmp_path}/sw",
      "--launcher=xpk",
      *XPK[:3],
      "--only=0",
      "--config.data.batch_size=4",
    ]
  )
  calls = cloud.calls()
  assert [c.split()[:5] for c in calls] == [
    ["gcloud", "compute", "tpus", "tpu-vm", "create"],
    ["xpk", "workload", "create", "--cluster=mv-cluster", "--workload=mv"],
    ["xpk", "workload", "create", "--cluster=mv-cluster", "--workload=mv-00"],
  ]


BAD = [  # (trainer flags, the words the one-line error must contain)
  (
    [f"--config={TINY}", "--config.optim.lrr=1"],
    ["--config.optim.lrr=1", "no config key 'optim.lrr'", "did you mean optim.lr"],
  ),
  (["--config=configs/nope.py:x"], ["no such config file 'configs/nope.py'"]),
  ([f"--config={TINY}", "--config.optim.lr=fast"], ["--config.optim.lr=fast", "does not fit optim.lr"]),
  (["--config=configs/wan2_1.py:1.3x"], ["configs/wan2_1.py: unknown variants ['1.3x']"]),
  ([f"--config={TINY}", "--config.mesh.tensor=3"], ["v5p-8 (4 devices)", "mesh"]),
  ([f"--config={TINY}", "--config.data.batch_size=6"], ["data.batch_size=6", "4 data shards"]),
  ([f"--config={REPO}/{TINY}"], ["relative to it"]),
]


@pytest.mark.parametrize("flags, words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_failed_preflight_calls_no_cloud_tool(cloud, flags, words):
  for launcher, argv in ((tpu, TPU), (xpk, XPK)):
    with pytest.raises(ValueError) as e:
      launcher.main([*argv, *flags])
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)
  assert cloud.calls() == []


def test_sweep_preflight_calls_no_cloud_tool(cloud):
  for launcher in (["--launcher=tpu", *TPU[:4], "--steps=create,install"], ["--launcher=xpk", *XPK[:3]]):
    with pytest.raises(ValueError, match="no config key 'optim.lrr'"):
      sweep.main(
        [
          "--config=configs/wan2_1.py:1.3b,full",
          "--workdir_root=gs://b/sw",
          *launcher,
          "--config.data.batch_size=4",
          "--config.optim.lrr=1",
        ]
      )
    with pytest.raises(ValueError, match=r"run 0 \(00_lr=5e-06\) on v5p-8 \(4 devices\): data.batch_size=6"):
      sweep.main(
        ["--config=configs/wan2_1.py:1.3b,full", "--workdir_root=gs://b/sw", *launcher, "--config.data.batch_size=6"]
      )
  assert cloud.calls() == []


def test_the_command_line_error_is_one_line_without_a_traceback(cloud):
  result = subprocess.run(
    [sys.executable, "-m", "microverse_jax.launch.tpu", *TPU, f"--config={TINY}", "--config.optim.lrr=1"],
    cwd=REPO,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=300,
  )
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 1 and errors == [
    "error: --config.optim.lrr=1: configs/microsim_tiny.py has no config key 'optim.lrr'; did you mean optim.lr?"
  ], result.stderr
  assert "Traceback" not in result.stderr and cloud.calls() == []


def test_tpu7x_counts_two_devices_per_chip():
  assert topologies.parse("tpu7x-8").devices == 8 and topologies.parse("v5p-8").devices == 4


# ---------------------------------------------------------------------------- the install the workers run
def _extras(install_line: str) -> set[str]:
  """`... pip install ... -e ./bench -e '.[tpu]'` -> {'tpu'}: the extras of the repo's own install."""
  words = shlex.split(install_line)
  specs = [w for w in words if re.fullmatch(r"\.\[[a-z0-9_,-]+\]", w)]
  assert specs, install_line
  return {e for s in specs for e in s[2:-1].split(",")}


def _installed_lines() -> list[str]:
  """The install commands as the launchers build them: tpu's ssh script and xpk's container command."""
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"), repo_url="https://x/r.git")
  runner = shell.Runner(True, out=io.StringIO())
  tpu.launch(vm, [], ["install"], runner, log_dir="logs")
  (ssh,) = runner.history
  script = [a for a in ssh if a.startswith("--command=")][0].split("=", 1)[1]
  w = xpk.XpkWorkload(cluster="mv-cluster", workload="mv", slice=topologies.parse("v5p-8"))
  container = [a for a in w.create_command(["python", "-m", "x"]) if a.startswith("--command=")][0]
  return [part for line in (script, container.split("=", 1)[1]) for part in line.split("&&") if "pip install" in part]


def _setup_extras() -> dict[str, list[str]]:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  return {
    name: [re.split(r"[<>=\[;! ]", r.strip())[0].lower() for r in reqs.splitlines() if r.strip()]
    for name, reqs in cfg["options.extras_require"].items()
  }


def test_the_workers_install_gcsfs_and_what_tensorboardx_needs_for_gs():
  import tensorboardX.record_writer as record_writer

  source = inspect.getsource(record_writer)
  assert "from google.cloud import storage" in source  # tensorboardX's gs:// writer (GCSRecordWriter)
  needed = {"gcsfs", "google-cloud-storage"}  # epath on gs://; tensorboardX on gs://
  lines = _installed_lines()
  assert len(lines) == 2  # one on TPU VMs, one in the XPK container
  extras = _setup_extras()
  for line in lines:
    named = _extras(line)
    assert named <= set(extras), (line, named)
    assert needed <= {pkg for e in named for pkg in extras[e]}, line
  assert needed <= set(extras["gcs"])


# ---------------------------------------------------------------------------- flags and --help
PARSERS = {
  "microverse_jax.launch.tpu": tpu.parser(),
  "microverse_jax.launch.xpk": xpk.parser(),
  "microverse_jax.launch.local": local.parser(),
  "microverse_jax.launch.sweep": sweep.parser("local"),
  "microverse_jax.launch.sweep tpu": sweep.parser("tpu"),
  "microverse_jax.launch.sweep xpk": sweep.parser("xpk"),
}


@pytest.mark.parametrize("name", PARSERS)
def test_one_flag_convention_and_help_with_defaults_and_the_real_program(name):
  p = PARSERS[name]
  for action in p._actions:
    long = [o for o in action.option_strings if o.startswith("--")]
    assert not long or re.fullmatch(r"--[a-z0-9_]+", long[0]), long  # absl style first; old spellings after
  text = p.format_help()
  assert text.startswith(f"usage: python -m {name.split()[0]} ")
  if "tpu" in name:
    assert "(default: create,install,run,logs)" in text
  if "xpk" in name:
    assert "(default: python:3.11)" in text
  assert "--dry_run, --dry-run" in text and "(default: None)" not in text


def test_old_spellings_still_work():
  args, _ = xpk.parser().parse_known_args([*XPK, "--tpu_type=v6e-8", "--config=c.py", "--dry-run", "--no-install"])
  assert (args.accelerator_type, args.dry_run, args.install) == ("v6e-8", True, False)
  args, _ = xpk.parser().parse_known_args([*XPK, "--config=c.py", "--noinstall"])
  assert args.install is False
  args, _ = tpu.parser().parse_known_args([*TPU, "--tpu_type=v5p-16", "--config=c.py"])
  assert args.accelerator_type == "v5p-16"


# ---------------------------------------------------------------------------- --fit
def test_fit_refuses_a_config_that_does_not_fit_and_names_overrides_that_do(cloud, tmp_path):
  """--fit compiles the step for the slice here (microverse_jax/fit.py). A v5p chip whose HBM share lies
  between what the tiny config needs as given (remat "none") and with nothing_saveable stands for a
  chip too small: both launchers refuse before any cloud call and name overrides that fit."""
  from microverse_jax import aot, fit
  from microverse_jax.configs import microsim_tiny

  cache = str(tmp_path / "fit.json")
  c = microsim_tiny.get_config("test")
  c.model.remat_policy = "none"
  planner = fit.Planner(c, cache)
  own, lean = (
    planner.record(c, "v5p-8", "own"),
    planner.record(fit.Combo("nothing_saveable", 4).apply(c), "v5p-8", "lean"),
  )
  assert lean["total_bytes"] < own["total_bytes"]
  fraction = (lean["total_bytes"] + own["total_bytes"]) / 2 / aot.parse_topology("v5p-8").hbm_bytes
  flags = [f"--config={TINY}", "--config.model.remat_policy=none", "--fit", f"--fit_hbm_fraction={fraction}"]
  for launcher, argv in ((tpu, TPU), (xpk, XPK)):
    with pytest.raises(preflight.PreflightError) as e:
      launcher.main([*argv, *flags, f"--fit_cache={cache}"])
    msg = str(e.value)
    assert "\n" not in msg and "on v5p-8: --fit: the step needs" in msg and "these overrides fit" in msg, msg
    overrides = msg.split("): ")[-1].split()
    assert overrides[0].startswith("--config.model.remat_policy=") and overrides[-1] == "--config.data.batch_size=4"
  assert cloud.calls() == []
  tpu.main([*TPU, *flags[:2], *overrides, "--fit", f"--fit_hbm_fraction={fraction}", f"--fit_cache={cache}"])
  assert len(cloud.calls()) == 1  # the named overrides pass the same preflight
