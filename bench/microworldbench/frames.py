"""Frame sampling (PyAV) and JPEG data-URL encoding for the judge.

Frames are taken at the centres of N equal segments of the video, as the official evaluator
does: position i = int(i * T/N + T/(2N)) for a video of T frames (T // 2 when N = 1).
"""

from __future__ import annotations

import base64
import io

import numpy as np

# (JPEG quality, longest side in pixels or None for the original size), tried in order when the
# judge answers 413 (payload too large).
ENCODING_LADDER: tuple[tuple[int, int | None], ...] = ((90, None), (75, 768), (60, 512), (45, 336))


class VideoError(RuntimeError):
  """A video that cannot be opened or decoded."""


def frame_positions(total_frames: int, num_frames: int) -> list[int]:
  """Indices of `num_frames` frames at segment centres of a `total_frames`-frame video."""
  if total_frames <= 0 or num_frames <= 0:
    raise ValueError(f"frame_positions: need total_frames > 0 and num_frames > 0, got {total_frames}, {num_frames}")
  if num_frames == 1:
    return [total_frames // 2]
  step = total_frames / num_frames
  return [int(i * step + step / 2) for i in range(num_frames)]


def _decode(path: str, wanted: set[int] | None) -> tuple[dict[int, np.ndarray], int]:
  """Decodes `path` once, keeping frames whose index is in `wanted` (all when None).

  Returns ({index: HxWx3 uint8}, number of frames decoded).
  """
  import av  # Imported here so that `import microworldbench` stays light.

  kept: dict[int, np.ndarray] = {}
  count = 0
  last = max(wanted) if wanted else None
  with av.open(path) as container:
    if not container.streams.video:
      raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    for frame in container.decode(stream):
      if wanted is None or count in wanted:
        kept[count] = frame.to_ndarray(format="rgb24")
      count += 1
      if last is not None and count > last:
        break
  return kept, count


def read_frames(path: str, num_frames: int = 8) -> np.ndarray:
  """Reads `num_frames` evenly spaced frames of a video: (F, H, W, 3) uint8 RGB.

  The container's frame count picks the positions so that only one decoding pass is needed;
  when the count is absent or wrong, the frames are decoded in full once and sampled.
  Raises VideoError for a missing, unreadable or empty video.
  """
  import av

  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
      claimed = int(container.streams.video[0].frames or 0)
    if claimed > 0:
      positions = frame_positions(claimed, num_frames)
      kept, _ = _decode(path, set(positions))
      if all(p in kept for p in positions):
        return np.stack([kept[p] for p in positions])
    kept, count = _decode(path, None)
  except VideoError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
  if count == 0:
    raise VideoError(f"{path}: video has no decodable frames")
  return np.stack([kept[p] for p in frame_positions(count, num_frames)])


def jpeg_data_urls(frames: np.ndarray, quality: int, max_side: int | None) -> list[str]:
  """(F, H, W, 3) uint8 -> F `data:image/jpeg;base64,...` URLs, downscaled to `max_side`."""
  from PIL import Image

  urls = []
  for frame in frames:
    image = Image.fromarray(np.ascontiguousarray(frame))
    if max_side is not None and max(image.size) > max_side:
      image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
  return urls


def reencode_data_urls(urls: list[str], quality: int, max_side: int | None) -> list[str]:
  """JPEG data URLs -> the same frames re-encoded at `quality`, downscaled to `max_side`."""
  from PIL import Image

  frames = np.stack(
    [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB")) for u in urls]
  )
  return jpeg_data_urls(frames, quality, max_side)
