"""Test set-up: CPU only (libtpu is installed for ahead-of-time TPU compiles, not for running)."""

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
