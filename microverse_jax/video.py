"""Video I/O with PyAV: mp4 encode/decode, the recipe's frame-count rule, resize-cover + centre crop.

Frames are uint8 channels-last arrays (F, H, W, 3) in RGB. No JAX here: this module runs inside
Grain worker processes and in the dataset builders.
"""

from __future__ import annotations

import dataclasses
import fractions
import io
import math

import av
import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` learns about an encoded video by decoding every frame."""

  num_frames: int
  fps: float
  height: int
  width: int


def recipe_num_frames(available: int, max_frames: int) -> int:
  """Largest N <= min(available, max_frames) with N = 1 (mod 4), as the Wan recipe takes; 0 if none.

  The Wan-VAE keeps the first frame and compresses the rest 4x in time, so clips must have 4k + 1 frames.
  """
  n = min(available, max_frames)
  return 0 if n < 1 else n - (n - 1) % 4


def usable_frames(available: int, stride: int) -> int:
  """How many frames a clip of `available` source frames gives when read every `stride` frames."""
  return 0 if available < 1 else (available - 1) // stride + 1


def encode_mp4(frames: np.ndarray, fps: float, *, crf: int = 18) -> bytes:
  """Encodes uint8 (F, H, W, 3) RGB frames as H.264 mp4 bytes (yuv420p; H and W must be even)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"encode_mp4 expects uint8 (F, H, W, 3) frames, got {frames.dtype} {frames.shape}")
  _, height, width, _ = frames.shape
  if height % 2 or width % 2:
    raise ValueError(f"encode_mp4 needs even height and width for yuv420p, got {height}x{width}")
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buffer.getvalue()


def probe(data: bytes) -> VideoInfo:
  """Decodes every frame of an encoded video and returns its size, fps and decodable frame count.

  Raises ValueError when the bytes are not a video, a frame fails to decode, or the file is
  truncated (fewer frames decode than the container declares).
  """
  try:
    with av.open(io.BytesIO(data), mode="r") as container:
      if not container.streams.video:
        raise ValueError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      declared = stream.frames
      count = 0
      for _ in container.decode(stream):
        count += 1
      rate = stream.average_rate or stream.base_rate or stream.guessed_rate
      info = VideoInfo(
        num_frames=count,
        fps=float(rate) if rate else 0.0,
        height=stream.codec_context.height,
        width=stream.codec_context.width,
      )
  except (av.FFmpegError, EOFError, OSError) as e:
    raise ValueError(f"unreadable video: {e}") from e
  if count == 0:
    raise ValueError("no decodable frames")
  if declared and count < declared:
    raise ValueError(f"truncated video: {count} of {declared} declared frames decode")
  return info


def _cover_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
  """The smallest (h, w) with the source's aspect ratio that covers the target."""
  scale = max(target_height / height, target_width / width)
  return (max(target_height, math.ceil(height * scale - 1e-6)), max(target_width, math.ceil(width * scale - 1e-6)))


def decode_frames(
  data: bytes, num_frames: int, *, stride: int = 1, height: int | None = None, width: int | None = None
) -> np.ndarray:
  """Decodes the first `num_frames` frames taken every `stride` frames -> uint8 (F, H, W, 3).

  With `height` and `width`, each frame is resized bilinearly to cover (height, width), keeping its
  aspect ratio, and centre-cropped to exactly that size. Raises ValueError when the video is
  unreadable or yields fewer than `num_frames` frames.
  """
  if num_frames < 1 or stride < 1:
    raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
  if (height is None) != (width is None):
    raise ValueError("give both height and width, or neither")
  frames = []
  try:
    with av.open(io.BytesIO(data), mode="r") as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for i, frame in enumerate(container.decode(stream)):
        if i % stride:
          continue
        if height is None:
          frames.append(frame.to_ndarray(format="rgb24"))
        else:
          cover_h, cover_w = _cover_size(frame.height, frame.width, height, width)
          rgb = frame.to_ndarray(format="rgb24", width=cover_w, height=cover_h, interpolation="BILINEAR")
          top, left = (cover_h - height) // 2, (cover_w - width) // 2
          frames.append(rgb[top : top + height, left : left + width])
        if len(frames) == num_frames:
          break
  except (av.FFmpegError, EOFError, OSError, IndexError) as e:
    raise ValueError(f"unreadable video: {e}") from e
  if len(frames) < num_frames:
    raise ValueError(f"video yields {len(frames)} frames at stride {stride}, {num_frames} needed")
  return np.stack(frames)


def to_model_range(frames: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 in [-1, 1] (0 -> -1, 255 -> 1), the scaling the Wan-VAE expects."""
  return frames.astype(np.float32) * (2.0 / 255.0) - 1.0
