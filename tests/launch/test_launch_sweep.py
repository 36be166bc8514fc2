"""Sweep expansion: run count, distinct readable workdirs, each run's overrides, and launching."""

from __future__ import annotations

import json
import os
import shlex
import textwrap

import pytest

from microverse_jax.launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAN = os.path.join(REPO, "configs", "wan2_1.py")


def _lines(text: str) -> list[str]:
  return [l for l in text.splitlines() if l and not l.startswith("#")]


def test_wan_lora_sweep_expands_to_nine_distinct_runs():
  runs = sweep.expand(f"{WAN}:1.3b,lora", "gs://bucket/sweeps/lora")
  assert len(runs) == 9
  assert [r.index for r in runs] == list(range(9))
  expected = [
    {"optim.lr": lr, "model.lora_rank": r, "model.lora_alpha": float(r)}
    for lr in (5e-5, 1e-4, 2e-4)
    for r in (16, 32, 64)
  ]
  assert [r.overrides for r in runs] == expected
  assert len({r.workdir for r in runs}) == 9
  assert all(r.workdir == f"gs://bucket/sweeps/lora/{r.name}" for r in runs)
  assert runs[0].name == "00_lr=5e-05_lora_rank=16_lora_alpha=16"
  assert runs[4].name == "04_lr=0.0001_lora_rank=32_lora_alpha=32"
  assert runs[4].flags() == [
    "--config.optim.lr=0.0001",
    "--config.model.lora_rank=32",
    "--config.model.lora_alpha=32.0",
  ]


def test_wan_full_sweep_sweeps_the_learning_rate_only(tmp_path):
  runs = sweep.expand(f"{WAN}:1.3b,full", str(tmp_path))
  assert [r.overrides for r in runs] == [{"optim.lr": 5e-6}, {"optim.lr": 1e-5}, {"optim.lr": 2e-5}]
  assert [r.name for r in runs] == ["00_lr=5e-06", "01_lr=1e-05", "02_lr=2e-05"]
  assert [r.workdir for r in runs] == [os.path.join(str(tmp_path), r.name) for r in runs]


def _config_file(tmp_path, sweep_body: str) -> str:
  path = tmp_path / "cfg.py"
  path.write_text(
    textwrap.dedent("""\
      import ml_collections

      def get_config(arg=""):
        c = ml_collections.ConfigDict()
        c.optim = ml_collections.ConfigDict(dict(lr=1e-3, steps=10))
        c.ema = ml_collections.ConfigDict(dict(lr=0.5))
        c.model = ml_collections.ConfigDict(dict(patch_size=(1, 2, 2), name="tiny", remat=False))
        return c

      """)
    + textwrap.dedent(sweep_body)
  )
  return str(path)


def test_clashing_short_keys_use_full_keys_and_values_read_well(tmp_path):
  path = _config_file(
    tmp_path,
    """\
      def sweep(arg=""):
        return [{"optim.lr": 0.1, "ema.lr": 0.9, "model.patch_size": (1, 4, 4), "model.name": "big one",
                 "model.remat": True}]
      """,
  )
  (run,) = sweep.expand(path, "/r")
  assert run.name == "00_optim.lr=0.1_ema.lr=0.9_patch_size=1-4-4_name=big-one_remat=true"
  assert run.flags() == [
    "--config.optim.lr=0.1",
    "--config.ema.lr=0.9",
    "--config.model.patch_size=(1, 4, 4)",
    "--config.model.name=big one",
    "--config.model.remat=true",
  ]


@pytest.mark.parametrize(
  "body, message",
  [
    (
      'def sweep(arg=""):\n  return [{"optim.learning_rate": 1.0}]\n',
      r"sweep\(''\)\[0\]: no config key 'optim.learning_rate'",
    ),
    ('def sweep(arg=""):\n  return [{"optimizer.lr": 1.0}]\n', r"no config key 'optimizer'"),
    ('def sweep(arg=""):\n  return [{"optim.steps": "many"}]\n', r"optim.steps='many' does not fit"),
    ('def sweep(arg=""):\n  return [{"optim.lr": 1.0}, {"optim.lr": 1.0}]\n', "repeated runs"),
    ('def sweep(arg=""):\n  return []\n', "non-empty list"),
    ('def sweep(arg=""):\n  return [["optim.lr", 1.0]]\n', "expected a dict"),
    ("", "defines no sweep"),
  ],
)
def test_bad_sweeps_are_rejected_before_launch(tmp_path, body, message):
  with pytest.raises(ValueError, match=message):
    sweep.expand(_config_file(tmp_path, body), "/r")


def test_missing_config_file():
  with pytest.raises(FileNotFoundError, match="no such config file"):
    sweep.expand("configs/nope.py:x", "/r")


def test_select_only():
  runs = sweep.expand(f"{WAN}:1.3b,lora", "/r")
  assert [r.index for r in sweep.select(runs, "0,3-5")] == [0, 3, 4, 5]
  assert sweep.select(runs, None) == runs
  with pytest.raises(ValueError, match="not \\[9\\]"):
    sweep.select(runs, "8-9")


def test_local_dry_run_lists_runs_and_writes_nothing(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  root = tmp_path / "sweep"
  sweep.main(
    ["--config=configs/wan2_1.py:1.3b,full", f"--workdir_root={root}", "--dry_run", "--config.train.num_steps=5"]
  )
  out = capsys.readouterr().out
  assert not root.exists()
  assert out.count("# run ") == 3
  commands = [shlex.split(l) for l in _lines(out)]
  assert len(commands) == 3
  for i, (command, lr) in enumerate(zip(commands, ("5e-06", "1e-05", "2e-05"))):
    assert command[0] == "JAX_PLATFORMS=cpu" and command[2:4] == ["-m", "microverse_jax.train"]
    assert command[4:] == [
      "--config=configs/wan2_1.py:1.3b,full",
      f"--workdir={root}/0{i}_lr={lr}",
      f"--config.optim.lr={lr}",
      "--config.train.num_steps=5",
    ]


def test_tpu_sweep_creates_once_and_runs_each_workdir(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  sweep.main(
    [
      "--config=configs/wan2_1.py:1.3b,lora",
      "--workdir_root=gs://b/sw",
      "--launcher=tpu",
      "--name=mv-sweep",
      "--zone=us-east5-a",
      "--accelerator_type=v5p-64",
      "--repo_url=https://x/r.git",
      "--only=1,2",
      "--dry_run",
      "--config.data.batch_size=32",
    ]
  )
  commands = [shlex.split(l) for l in _lines(capsys.readouterr().out)]
  # install, run 1 + logs, run 2 + logs
  assert [c[4] for c in commands] == ["create", "ssh", "ssh", *["scp"] * 8, "ssh", *["scp"] * 8]
  runs = [c for c in commands if c[4] == "ssh" and "microverse_jax.train" in c[-1]]
  assert len(runs) == 2
  assert "--workdir=gs://b/sw/01_lr=5e-05_lora_rank=32_lora_alpha=32 --config.optim.lr=5e-05" in runs[0][-1]
  assert "--workdir=gs://b/sw/02_lr=5e-05_lora_rank=64_lora_alpha=64" in runs[1][-1]


def test_xpk_sweep_makes_one_workload_per_run(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  sweep.main(
    [
      "--config=configs/wan2_1.py:1.3b,full",
      "--workdir_root=gs://b/sw",
      "--launcher=xpk",
      "--cluster=c",
      "--tpu_type=v6e-16",
      "--workload=mv-lr",
      "--dry_run",
      "--config.data.batch_size=16",
    ]
  )
  commands = [shlex.split(l) for l in _lines(capsys.readouterr().out)]
  assert [c[:3] for c in commands] == [["xpk", "workload", "create"]] * 3
  assert [[a for a in c if a.startswith("--workload=")] for c in commands] == [
    ["--workload=mv-lr-00"],
    ["--workload=mv-lr-01"],
    ["--workload=mv-lr-02"],
  ]


def test_manifest_lists_every_run(tmp_path):
  runs = sweep.expand(f"{WAN}:1.3b,full", str(tmp_path / "root"))
  path = sweep.write_manifest(str(tmp_path / "root"), "configs/wan2_1.py:1.3b,full", runs)
  manifest = json.loads(path.read_text())
  assert manifest["config"] == "configs/wan2_1.py:1.3b,full"
  assert [r["workdir"] for r in manifest["runs"]] == [r.workdir for r in runs]
  assert [r["overrides"] for r in manifest["runs"]] == [r.overrides for r in runs]
  assert sorted(os.listdir(tmp_path / "root")) == ["sweep.json"]


def test_a_second_launch_replaces_the_manifest(tmp_path):
  """Relaunching a sweep (e.g. --only=3 after a full launch) rewrites sweep.json, leaving no temp file."""
  root = str(tmp_path / "root")
  runs = sweep.expand(f"{WAN}:1.3b,full", root)
  sweep.write_manifest(root, "configs/wan2_1.py:1.3b,full", runs)
  path = sweep.write_manifest(root, "configs/wan2_1.py:1.3b,full", runs[1:])
  assert [r["index"] for r in json.loads(path.read_text())["runs"]] == [1, 2]
  assert sorted(os.listdir(root)) == ["sweep.json"]


def test_sweep_preflight_checks_every_run_against_the_slice(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ValueError, match=r"run 0 \(00_lr=5e-06\) on v6e-16 \(16 devices\): data.batch_size=8"):
    sweep.main(
      [
        "--config=configs/wan2_1.py:1.3b,full",
        "--workdir_root=gs://b/sw",
        "--launcher=xpk",
        "--cluster=c",
        "--accelerator_type=v6e-16",
        "--workload=mv-lr",
        "--dry_run",
      ]
    )
  with pytest.raises(ValueError, match="no config key 'optim.lrr'; did you mean optim.lr"):
    sweep.main(["--config=configs/wan2_1.py:1.3b,full", "--workdir_root=/tmp/sw", "--dry_run", "--config.optim.lrr=1"])
