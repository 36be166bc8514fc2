"""Test set-up: CPU only (libtpu is installed for ahead-of-time TPU compiles, not for running)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # silences libtpu's host probing warnings
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # AOT compiles only; no TPU is held

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory):
  """A small microsim_synth dataset (48 clips of 9 frames at 32x32), built once per session."""
  from microverse_jax import build_dataset
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  build_dataset.build("microsim_synth", data_dir, num_clips=48, num_frames=9, size=32)
  return data_dir
