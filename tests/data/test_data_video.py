"""video.py: the 4k+1 frame rule, mp4 round trips, stride, resize-cover + centre crop, corrupt input."""

from __future__ import annotations

import av
import numpy as np
import pytest

from microverse_jax import video


@pytest.mark.parametrize(
  "available,max_frames,expected",
  [
    (81, 81, 81),
    (80, 81, 77),
    (100, 81, 81),
    (17, 81, 17),
    (16, 81, 13),
    (5, 81, 5),
    (4, 81, 1),
    (1, 81, 1),
    (0, 81, 0),
    (100, 18, 17),
    (100, 20, 17),
    (100, 21, 21),
  ],
)
def test_recipe_num_frames(available, max_frames, expected):
  n = video.recipe_num_frames(available, max_frames)
  assert n == expected
  assert n == 0 or (n % 4 == 1 and n <= min(available, max_frames))


def test_stride_arithmetic():
  assert video.usable_frames(10, 2) == 5  # frames 0, 2, 4, 6, 8
  assert video.usable_frames(9, 2) == 5 and video.usable_frames(0, 3) == 0


def _gray_levels(num_frames: int, height: int = 32, width: int = 32) -> np.ndarray:
  """Frame i is flat gray at level 10 * i."""
  return np.broadcast_to(
    (np.arange(num_frames) * 10).astype(np.uint8)[:, None, None, None], (num_frames, height, width, 3)
  ).copy()


def test_encode_probe_decode_round_trip():
  frames = _gray_levels(13, 32, 48)
  data = video.encode_mp4(frames, fps=12)
  info = video.probe(data)
  assert info == video.VideoInfo(num_frames=13, fps=12.0, height=32, width=48)
  decoded = video.decode_frames(data, 13)
  assert decoded.shape == (13, 32, 48, 3) and decoded.dtype == np.uint8
  assert np.abs(decoded.astype(int) - frames).mean() < 3


def test_decode_first_frames_with_stride():
  data = video.encode_mp4(_gray_levels(13), fps=8)
  decoded = video.decode_frames(data, 5, stride=3)
  np.testing.assert_allclose(decoded.mean(axis=(1, 2, 3)), [0, 30, 60, 90, 120], atol=3)
  with pytest.raises(ValueError, match="yields 4 frames"):
    video.decode_frames(data, 6, stride=4)  # frames 0, 4, 8, 12 only


@pytest.mark.parametrize("src_hw,target_hw", [((32, 64), (16, 16)), ((16, 64), (32, 32)), ((32, 64), (24, 40))])
def test_resize_cover_and_centre_crop(src_hw, target_hw):
  h, w = src_hw
  th, tw = target_hw
  # Gray V: 0 at the centre column, 255 at both edges. A centred crop keeps it symmetric.
  x = np.arange(w) + 0.5
  ramp = np.abs(x - w / 2) / (w / 2)
  frame = np.broadcast_to(np.round(255 * ramp).astype(np.uint8)[None, None, :, None], (2, h, w, 3)).copy()
  out = video.decode_frames(video.encode_mp4(frame, fps=8, crf=0), 1, height=th, width=tw)
  assert out.shape == (1, th, tw, 3)
  row = out[0, th // 2, :, 0].astype(float)
  np.testing.assert_allclose(row, row[::-1], atol=6)
  # The cover scale fixes the height when the source is wider than the target: the crop spans
  # tw / scale source columns around the centre, so its edge sits at ramp value (tw / scale) / w.
  scale = max(th / h, tw / w)
  expected_edge = 255 * (tw / scale) / w
  assert abs(row[[0, -1]].mean() - expected_edge) < 255 * 1.5 / (tw / 2) + 6
  assert row[tw // 2 - 1 : tw // 2 + 1].mean() < 255 / (tw / 2) + 6


def test_to_model_range():
  out = video.to_model_range(np.array([0, 255, 51], np.uint8))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [-1.0, 1.0, 51 * 2 / 255 - 1], atol=1e-6)


def test_corrupt_inputs_raise_value_error(tmp_path):
  with pytest.raises(ValueError, match="unreadable"):
    video.probe(b"not a video at all" * 50)
  with pytest.raises(ValueError, match="unreadable"):
    video.decode_frames(b"\x00" * 1000, 1)
  # A faststart mp4 (index first) cut in half: the container opens but frames are missing.
  path = str(tmp_path / "faststart.mp4")
  with av.open(path, "w", options={"movflags": "faststart"}) as container:
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    noise = np.random.default_rng(0).integers(0, 256, (17, 32, 32, 3), dtype=np.uint8)
    for frame in noise:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  data = open(path, "rb").read()
  assert video.probe(data).num_frames == 17
  with pytest.raises(ValueError, match="truncated"):
    video.probe(data[: len(data) // 2])
  with pytest.raises(ValueError, match="even"):
    video.encode_mp4(np.zeros((2, 31, 32, 3), np.uint8), fps=8)
