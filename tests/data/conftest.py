"""Fixtures for the data tests: a tiny microsim_synth build and a microsim10k manual dir with bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, video
from microverse_jax.datasets.microsim_synth import render_clip

tfds.disable_progress_bar()

SYNTH = {"num_clips": 12, "seed": 3, "num_frames": 9, "size": 32}


@pytest.fixture(scope="session")
def synth_settings() -> dict:
  return dict(SYNTH)


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("synth"))
  build_dataset.build("microsim_synth", data_dir, **SYNTH)
  return data_dir


def _valid_clip(i: int) -> bytes:
  params = {"num_particles": 4, "radius_px": 2.0, "diffusion_px2_per_frame": 1.0}
  frames = render_clip("brownian", params, num_frames=9 + i, size=32, seed=i)
  return video.encode_mp4(np.ascontiguousarray(frames[:, :, :24]), fps=8)  # 32 x 24 px, 9 + i frames


VALID_IDS = [f"clip{i}" for i in range(6)]


@pytest.fixture(scope="session")
def valid_ids() -> list[str]:
  return list(VALID_IDS)


@pytest.fixture(scope="session")
def manual_dir(tmp_path_factory):
  """Six valid clips plus a corrupt mp4, a missing file, a ../ path, an absolute path, a row without prompt."""
  root = tmp_path_factory.mktemp("microsim10k_manual")
  (root / "videos").mkdir()
  rows = []
  for i, clip_id in enumerate(VALID_IDS):
    (root / "videos" / f"{clip_id}.mp4").write_bytes(_valid_clip(i))
    rows.append({"id": clip_id, "video": f"videos/{clip_id}.mp4", "prompt": f"A caption for {clip_id}."})
  good = (root / "videos" / "clip0.mp4").read_bytes()
  (root / "videos" / "corrupt.mp4").write_bytes(good[: len(good) // 2])
  (root.parent / "outside.mp4").write_bytes(good)
  rows += [
    {"id": "corrupt", "video": "videos/corrupt.mp4", "prompt": "corrupt"},
    {"id": "missing", "video": "videos/missing.mp4", "prompt": "missing"},
    {"id": "escape", "video": "../outside.mp4", "prompt": "escapes the manual dir"},
    {"id": "absolute", "video": str(root / "videos" / "clip1.mp4"), "prompt": "absolute path"},
    {"id": "noprompt", "video": "videos/clip2.mp4"},
  ]
  (root / "metadata.json").write_text(json.dumps(rows))
  return root


@pytest.fixture(scope="session")
def microsim10k_data_dir(tmp_path_factory, manual_dir) -> str:
  data_dir = str(tmp_path_factory.mktemp("microsim10k_data"))
  build_dataset.build("microsim10k", data_dir, manual_dir=str(manual_dir))
  return data_dir
