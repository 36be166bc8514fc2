"""Test set-up: CPU only (libtpu is installed for ahead-of-time TPU compiles, not for running)."""

import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # silences libtpu's host probing warnings
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # AOT compiles only; no TPU is held

import jax  # noqa: E402
import pytest  # noqa: E402

# fp32 references in full precision on GPUs (their default fp32 matmul is TF32). Not set elsewhere:
# on TPU it would also reach the Mosaic kernels, whose bf16 dots refuse fp32 precision.
if jax.default_backend() == "gpu":
  jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory):
  """A small microsim_synth dataset (48 clips of 9 frames at 32x32), built once per session."""
  from microverse_jax import build_dataset

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  build_dataset.build("microsim_synth", data_dir, num_clips=48, num_frames=9, size=32)
  return data_dir


@pytest.fixture(scope="session")
def run_on_cpu_devices():
  """run(args, num_devices, *, timeout, pythonpath=()) -> CompletedProcess: `python *args` in a fresh
  process that sees `num_devices` simulated CPU devices, run from the repo with it importable."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(args, num_devices: int, *, timeout: int = 600, pythonpath=()):
    env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}",
      "PYTHONPATH": os.pathsep.join([repo, *pythonpath, os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)

  return run


MESH_LOSSES = r"""
import json, sys
from microverse_jax.configs import microsim_tiny
from microverse_jax import train
out = {}
for name, mesh in json.loads(sys.argv[2]).items():
  c = microsim_tiny.get_config("test")
  c.data.update(data_dir=sys.argv[1], batch_size=8)
  c.train.update(num_steps=5, checkpoint_every=5)
  c.diffusion.prediction = "velocity"  # Wan2.1's objective: O(1) losses, so 1e-5 is a tight bound
  c.mesh.update(**mesh)
  wd = sys.argv[3] + "/" + name
  train.train(c, wd)
  out[name] = {r["step"]: r["loss"] for r in map(json.loads, open(wd + "/metrics.jsonl"))}
print("LOSSES" + json.dumps(out))
"""


@pytest.fixture(scope="session")
def check_meshes_match_one_device(synth_data_dir, run_on_cpu_devices, tmp_path_factory):
  """check(meshes: {name: mesh overrides}) -> stdout: five steps of the tiny config at batch 8 per mesh,
  in one process with 8 simulated devices, give the losses of the same run on one device (1e-5)."""

  def losses(meshes: dict, num_devices: int):
    workdir = str(tmp_path_factory.mktemp("meshes"))
    run = run_on_cpu_devices(["-c", MESH_LOSSES, synth_data_dir, json.dumps(meshes), workdir], num_devices, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.split("LOSSES")[-1])
    assert set(got) == set(meshes) and all(len(v) == 5 for v in got.values())
    return got, run.stdout

  single = {}

  def check(meshes: dict) -> str:
    if not single:  # computed once per session, shared by every mesh test
      single.update(losses({"single": dict(data=1)}, 1)[0]["single"])
    got, stdout = losses(meshes, 8)
    for name, run in got.items():
      for step, loss in single.items():
        assert abs(run[step] - loss) <= 1e-5, (name, step, run[step], loss)
    return stdout

  return check
