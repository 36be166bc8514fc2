"""Helpers for the MicroWorldBench scorer tests: official file paths, tiny rubrics and videos.

(A module of its own, not conftest.py, so that tests import it by a name no other folder uses.)
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "microworldbench"


def official_file(name: str) -> str:
  path = SHARED / name
  if not path.exists():
    pytest.skip(f"official file {path} not present")
  return str(path)


def write_gray_video(
  path: str, num_frames: int = 16, size: tuple[int, int] = (48, 64), codec: str = "libx264", texture: bool = False
) -> None:
  """A video whose frame i is flat gray at level 10 * i (so frame positions can be read back),
  or with `texture` a noisy one (so that JPEG sizes depend on quality)."""
  import av

  noise = np.random.default_rng(0).integers(0, 60, (*size, 3)) if texture else 0

  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=8)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "0", "preset": "ultrafast"}
    for i in range(num_frames):
      rgb = (np.full((*size, 3), 10 * i) + noise).astype(np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def make_task(
  index: int,
  k: int = 5,
  norm_keys: bool = False,
  numbering: str = "plain",
  penalties: tuple[int, ...] = (5,),
  weights: list | None = None,
) -> dict:
  """A rubric task whose text says TASK-<index>; criteria d1..dk (or d11, d22, ...)."""
  task = {"index": index}
  text_keys = ("任务", "具体要求") if norm_keys else ("task", "requirement")
  task[text_keys[0]] = f"TASK-{index}: a red blood cell squeezes through a capillary."
  task[text_keys[1]] = f"Requirement for task {index}: show the deformation clearly."
  for dim in ("scientific", "visual", "instruction"):
    block = {}
    for i in range(1, k + 1):
      n = 11 * i if numbering == "double" else i
      block[f"d{n}"] = f"{dim} criterion {i} of task {index}"
      block[f"s{n}"] = "-1" if i in penalties else "+1"
      block[f"w{n}"] = weights[i - 1] if weights else "1.0"
    task[f"rubrics_{dim}"] = block
  return task
