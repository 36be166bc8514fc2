"""Fixtures for the MicroWorldBench scorer tests: tiny rubric files and tiny videos."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # For mwb_helpers and mwb_judge_server.

from mwb_helpers import make_task, write_gray_video  # noqa: E402


@pytest.fixture(scope="session")
def gray_video(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("video") / "gray.mp4")
  write_gray_video(path)
  return path


@pytest.fixture
def bench_dir(tmp_path, gray_video):
  """A folder with rubrics.json (tasks 1..6), tasks.json, and videos/<i>.mp4 for 1..6."""

  def build(n: int = 6, videos: int | None = None) -> dict[str, str]:
    tasks = [make_task(i) for i in range(1, n + 1)]
    (tmp_path / "rubrics.json").write_text(json.dumps(tasks), encoding="utf-8")
    labels = ["Organ-level", "Cellular-level", "Subcellular-level"]
    (tmp_path / "tasks.json").write_text(
      json.dumps([{"index": i, "final_label": labels[i % 3]} for i in range(1, n + 1)]), encoding="utf-8"
    )
    vdir = tmp_path / "videos"
    vdir.mkdir(exist_ok=True)
    for i in range(1, (n if videos is None else videos) + 1):
      shutil.copy(gray_video, vdir / f"{i}.mp4")
    return {
      "rubrics": str(tmp_path / "rubrics.json"),
      "tasks": str(tmp_path / "tasks.json"),
      "videos": str(vdir),
      "out": str(tmp_path / "Model_result.json"),
    }

  return build
