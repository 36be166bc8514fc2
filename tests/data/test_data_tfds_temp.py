"""TFDS leaves nothing behind (issue 25, item 7): a builder made for a dataset not yet prepared asks
TFDS's public bucket for precomputed info through an empty temporary folder it never removes; ours
skip that probe (microverse_jax.datasets.dataset_info)."""

from __future__ import annotations

import tempfile

from microverse_jax import build_dataset
from microverse_jax.datasets.microsim10k import Microsim10k
from microverse_jax.datasets.microsim_synth import MicrosimSynth


def test_building_and_making_builders_leaves_no_temporary_folders(tmp_path, monkeypatch):
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  for n in range(3):  # builders for datasets not prepared yet
    MicrosimSynth(data_dir=str(tmp_path / f"synth{n}"))
    Microsim10k(data_dir=str(tmp_path / f"microsim10k{n}"))
  build_dataset.build("microsim_synth", str(tmp_path / "built"), num_clips=4, num_frames=5, size=16)
  assert sorted(p.name for p in scratch.iterdir()) == []
