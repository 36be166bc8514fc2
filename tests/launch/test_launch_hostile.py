"""Hostile input to the launchers (issue 17, items 1 and 10; issue 29): names that would run code on every
worker, paths with spaces, secrets in untracked files, an absurd slice count, a preempted trainer. The remote
scripts are run here, in bash, against stand-in programs, so the test sees what a worker's shell would do with them."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from microverse_jax.launch import local, preflight, shell, topologies, tpu, xpk

pytestmark = pytest.mark.hostile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/microsim_tiny.py:test"
INJECTED = "x$(touch${IFS}P)"  # runs `touch P` wherever a shell expands it unquoted


def _flag(argv, name):
  (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
  return value


def _worker(tmp_path):
  """A fake worker home: ~/microverse-jax, and a venv python that prints its argv as JSON."""
  home = tmp_path / "home"
  (home / "microverse-jax").mkdir(parents=True)
  python = home / "microverse-venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  python.chmod(0o755)
  return home


def _run_remote(script: str, home) -> subprocess.CompletedProcess:
  """What `gcloud ... ssh --command=SCRIPT` makes a worker's login shell (bash) do."""
  return subprocess.run(
    ["bash", "-c", script], cwd=home, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=60
  )


@pytest.mark.parametrize(
  "workdir",
  [f"gs://b/runs/{INJECTED}", "gs://b/runs/my run", "gs://b/runs/..", "gs://b/runs/a;b", "gs://b/runs/.hidden"],
)
def test_run_names_that_a_shell_would_read_are_refused_before_anything_runs(workdir, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  with pytest.raises(ValueError, match="names the run's log files"):
    tpu.main(
      [
        "--name=mv",
        "--zone=us-east5-a",
        "--accelerator_type=v5p-8",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        "--steps=run,logs",
        "--dry_run",
      ]
    )
  assert capsys.readouterr().out == ""  # refused before a single command was printed
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-8"))
  with pytest.raises(ValueError, match="names the run's log files"):
    vm.run_command(tpu.train_command(CONFIG, workdir), os.path.basename(workdir))  # the API checks too
  assert not (tmp_path / "P").exists()


@pytest.mark.parametrize("workdir", [f"gs://b/{INJECTED}/run", "gs://b/my runs/run", "/tmp/it's here/run"])
def test_hostile_workdirs_reach_the_trainer_as_one_argument_and_run_nothing(workdir, tmp_path):
  home = _worker(tmp_path)
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"))
  train = tpu.train_command(CONFIG, workdir, ["--config.optim.lr=0.5"])
  result = _run_remote(_flag(vm.run_command(train, "run"), "--command"), home)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == train[1:]  # the exact argv, the workdir one argument
  assert (home / "microverse-logs" / "run.log").read_text() == result.stdout
  assert not (home / "microverse-jax" / "P").exists() and not (home / "P").exists()


def test_xpk_container_command_quotes_the_workdir(tmp_path):
  home = _worker(tmp_path)
  workdir = f"gs://b/{INJECTED} x/run"
  w = xpk.XpkWorkload(cluster="mv-cluster", workload="mv", slice=topologies.parse("v5p-8"), install=False)
  train = shell.train_argv(CONFIG, workdir, python=str(home / "microverse-venv" / "bin" / "python"))
  result = _run_remote(_flag(w.create_command(train), "--command"), home)
  assert json.loads(result.stdout) == train[1:] and not (home / "P").exists()


def test_git_clone_takes_its_url_after_double_dash_and_quotes_the_branch():
  vm = tpu.TpuVm(
    name="mv",
    zone="us-east5-a",
    slice=topologies.parse("v5p-16"),
    repo_url="--upload-pack=touch P",
    branch="dev; touch P",
  )
  script = _flag(vm.install_commands()[0], "--command")
  words = shlex.split(script.split("&&")[1])
  assert words == [
    "git",
    "clone",
    "--depth=1",
    "--branch",
    "dev; touch P",
    "--",
    "--upload-pack=touch P",
    "microverse-jax",
  ]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(zone="us-east5-a; touch P"), "--zone="),
    (dict(zone="us east"), "--zone="),
    (dict(project="p$(id)"), "--project="),
    (dict(project="-x"), "--project="),
  ],
)
def test_tpu_zone_and_project_are_validated(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tpu.TpuVm(**{"name": "mv", "zone": "us-east5-a", "slice": topologies.parse("v5p-8"), **kwargs})


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(cluster="c;rm"), "--cluster="),
    (dict(cluster="C"), "--cluster="),
    (dict(zone="$(id)"), "--zone="),
    (dict(project="my project"), "--project="),
    (dict(docker_image="img;rm -rf /"), "--docker_image="),
    (dict(priority="urgent"), "--priority="),
  ],
)
def test_xpk_cluster_zone_project_image_are_validated(kwargs, message):
  with pytest.raises(ValueError, match=message):
    xpk.XpkWorkload(**{"cluster": "mv-cluster", "workload": "mv", "slice": topologies.parse("v5p-8"), **kwargs})


# ---------------------------------------------------------------------------- what install uploads
@pytest.fixture
def repo(tmp_path):
  """A git repo with a tracked file, an ignored one and untracked secrets (.env, results/)."""
  root = tmp_path / "repo"
  root.mkdir()
  git = lambda *a: subprocess.run(["git", "-C", str(root), *a], check=True, capture_output=True, timeout=30)
  git("init", "-q")
  (root / ".gitignore").write_text("*.log\n")
  (root / "configs").mkdir()
  (root / "configs" / "c.py").write_text("x = 1\n")
  git("add", ".gitignore", "configs/c.py")
  (root / ".env").write_text("OPENAI_API_KEY=sk-secret\n")
  (root / "results").mkdir()
  (root / "results" / "scores.jsonl").write_text("{}\n")
  (root / "debug.log").write_text("ignored\n")
  return root


class _Recorder(shell.Runner):
  """A live runner that runs nothing; it records each command and the tarball's mode at the copy."""

  def __call__(self, argv, **kwargs):
    self.show(argv)
    if argv[4] == "scp" and os.path.exists(argv[5]):
      self.tarball, self.mode = argv[5], stat.S_IMODE(os.stat(argv[5]).st_mode)
      with tarfile.open(argv[5]) as tar:
        self.names = sorted(tar.getnames())


def test_install_uploads_tracked_files_only_in_a_private_temp_file(repo, tmp_path):
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"))
  runner = _Recorder(False, out=io.StringIO())
  tpu.launch(vm, [], ["install"], runner, log_dir=str(tmp_path / "logs"), repo_root=str(repo), needed=["configs/c.py"])
  assert runner.names == [".gitignore", "configs/c.py"]  # no .env, no results/
  assert runner.mode == 0o600 and not runner.tarball.startswith(str(repo))
  assert os.path.basename(runner.tarball) != "mv-microverse-jax.tar.gz"  # not the old predictable name
  assert not os.path.exists(runner.tarball)  # removed once copied
  assert "uploads 2 tracked files" in runner.out.getvalue()


def test_include_untracked_opts_in_and_lists_what_it_adds(repo, tmp_path):
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"))
  runner = _Recorder(False, out=io.StringIO())
  tpu.launch(vm, [], ["install"], runner, log_dir=str(tmp_path / "logs"), repo_root=str(repo), include_untracked=True)
  assert runner.names == [".env", ".gitignore", "configs/c.py", "results/scores.jsonl"]
  assert "and 2 untracked ones: .env, results/scores.jsonl" in runner.out.getvalue()


def test_an_untracked_config_is_refused_before_the_slice_is_created(repo, tmp_path):
  (repo / "configs" / "new.py").write_text("y = 2\n")
  vm = tpu.TpuVm(name="mv", zone="us-east5-a", slice=topologies.parse("v5p-16"))
  runner = _Recorder(False, out=io.StringIO())
  with pytest.raises(ValueError, match=r"configs/new.py: not among the files install uploads \(commit"):
    tpu.launch(
      vm,
      [],
      ["create", "install"],
      runner,
      log_dir=str(tmp_path / "logs"),
      repo_root=str(repo),
      needed=["configs/new.py"],
    )
  assert runner.history == []


def test_gitignore_keeps_secrets_and_outputs_out():
  for path in (".env", "results/x.json", "videos/0.mp4"):
    result = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", "--no-index", path], timeout=30)
    assert result.returncode == 0, f"{path} is not ignored"


@pytest.mark.parametrize(
  "launcher, flags",
  [(tpu, ["--name=mv", "--zone=us-east5-a", "--queued"]), (xpk, ["--cluster=mv-cluster", "--workload=mv"])],
)
def test_an_absurd_num_slices_is_refused_in_one_line_before_any_command(launcher, flags, monkeypatch, capsys):
  """--num_slices had no upper bound: a dry run printed 30 MB of commands."""
  monkeypatch.chdir(REPO)
  argv = [*flags, "--accelerator_type=v5p-16", "--num_slices=100000", f"--config={CONFIG}", "--workdir=gs://b/r"]
  with pytest.raises(ValueError, match=r"^--num_slices=100000: expected a positive count of slices, at most 256$"):
    launcher.main([*argv, "--config.data.batch_size=800000", "--dry_run"])
  assert capsys.readouterr().out == ""
  with pytest.raises(preflight.PreflightError, match=r"^--num_slices=100000: .*at most 256"):
    preflight.check(CONFIG, [], slice=topologies.parse("v5p-16"), num_slices=100000)


@pytest.mark.parametrize(
  "trainer, processes",
  [
    ("import sys; sys.exit(143)", 1),  # the trainer after a SIGTERM: saved, exit 143
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 1),  # killed by SIGTERM before it saved
    ("import os, sys, time; time.sleep(0.5 * int(os.environ['JAX_PROCESS_ID'])); sys.exit(143)", 2),
  ],
)
def test_a_preempted_trainer_makes_the_local_launcher_say_so_and_exit_143(trainer, processes, tmp_path, capsys):
  """The launcher turned the trainer's preemption into a failure with status 1; a Job or a script that reruns
  preempted runs needs it kept."""

  def launch(argv):
    runner = shell.Runner(False, out=io.StringIO())
    local.run([sys.executable, "-c", trainer], runner, num_processes=processes, log_dir=str(tmp_path), timeout=60)

  with pytest.raises(SystemExit) as stopped:
    shell.cli(launch, [])
  assert stopped.value.code == 143
  assert "rerun the same launch to resume" in capsys.readouterr().err


def test_xpk_sends_the_pods_sigterm_to_the_trainer_and_returns_its_143(tmp_path):
  """XPK's container script starts --command in the background, forwards the pod's SIGTERM to it and exits with
  its status (143 makes the JobSet restart it under --max_restarts): the trainer itself must get the signal."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  (bin_dir / "pip").write_text("#!/bin/sh\nexit 0\n")
  trainer = bin_dir / "trainer"
  trainer.write_text(
    f"#!{sys.executable}\nimport pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path('saved').touch(), sys.exit(143)))\n"
    "pathlib.Path('ready').touch()\ntime.sleep(30)\n"
  )
  for program in bin_dir.iterdir():
    program.chmod(0o755)
  w = xpk.XpkWorkload(cluster="mv-cluster", workload="mv", slice=topologies.parse("v5p-8"), max_restarts=3)
  create = w.create_command([str(trainer), "--workdir=gs://b/r"])
  assert _flag(create, "--max-restarts") == "3"
  pod = (  # what XPK's container runs, its 5 s poll made short
    f"trap 'kill -TERM $PID 2>/dev/null' TERM; ({_flag(create, '--command')}) & PID=$!; "
    "while kill -0 $PID 2>/dev/null; do sleep 0.1; done; wait $PID; exit $?"
  )
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
  proc = subprocess.Popen(["bash", "-c", pod], cwd=home, env=env)
  deadline = time.time() + 30
  while not (home / "ready").exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 143 and (home / "saved").exists()
  with pytest.raises(ValueError, match="--max_restarts=-1"):
    xpk.XpkWorkload(cluster="mv-cluster", workload="mv", slice=topologies.parse("v5p-8"), max_restarts=-1)
