"""Frame sampling at segment centres (one decode per video) and JPEG data URLs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from mwb_helpers import write_gray_video
from PIL import Image

from microworldbench.frames import VideoError, frame_positions, jpeg_data_urls, read_frames, reencode_data_urls


def test_frame_positions_are_segment_centres():
  assert frame_positions(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
  # 81 frames (Wan2.1): step 10.125, centres 5.06, 15.19, ...
  assert frame_positions(81, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
  assert frame_positions(81, 1) == [40]
  assert frame_positions(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
  with pytest.raises(ValueError):
    frame_positions(0, 8)


@pytest.mark.parametrize("suffix, codec", [("mp4", "libx264"), ("mkv", "libx264"), ("avi", "mpeg4")])
def test_read_frames_picks_the_right_frames(tmp_path, suffix, codec):
  path = str(tmp_path / f"v.{suffix}")
  write_gray_video(path, num_frames=16, codec=codec)
  frames = read_frames(path, 8)
  assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
  # Frame i is gray level 10 * i; positions 1, 3, ..., 15.
  np.testing.assert_allclose(frames.reshape(8, -1).mean(axis=1), [10 * p for p in range(1, 16, 2)], atol=4)


def test_unreadable_and_missing_videos_raise_video_error(tmp_path):
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"\x00not a video" * 100)
  with pytest.raises(VideoError, match="bad.mp4"):
    read_frames(str(bad))
  with pytest.raises(VideoError, match="missing.mp4"):
    read_frames(str(tmp_path / "missing.mp4"))


def test_jpeg_data_urls_encode_and_downscale():
  frames = np.random.default_rng(0).integers(0, 255, (2, 120, 200, 3), dtype=np.uint8)
  full = jpeg_data_urls(frames, quality=90, max_side=None)
  small = jpeg_data_urls(frames, quality=45, max_side=50)
  assert all(u.startswith("data:image/jpeg;base64,") for u in full + small)
  img = Image.open(io.BytesIO(base64.b64decode(full[0].split(",", 1)[1])))
  assert img.format == "JPEG" and img.size == (200, 120)
  img = Image.open(io.BytesIO(base64.b64decode(small[0].split(",", 1)[1])))
  assert img.size == (50, 30)
  assert sum(map(len, small)) < sum(map(len, full))


def test_reencode_data_urls_shrinks_the_same_frames():
  yy, xx = np.mgrid[0:120, 0:200]
  frame = np.stack([xx % 256, yy * 2, (xx + yy) % 256], -1).astype(np.uint8)
  base = jpeg_data_urls(frame[None], quality=90, max_side=None)
  (small,) = reencode_data_urls(base, quality=45, max_side=100)
  img = np.asarray(Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))))
  assert img.shape == (60, 100, 3) and len(small) < len(base[0])
  expected = np.asarray(Image.fromarray(frame).resize((100, 60)), dtype=np.float32)
  assert np.abs(img.astype(np.float32) - expected).mean() < 12
