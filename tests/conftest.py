"""Test set-up: CPU only (libtpu is installed for ahead-of-time TPU compiles, not for running)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # silences libtpu's host probing warnings
