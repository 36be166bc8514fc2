"""Object detection in microscopy-like frames: background removal, spots, cell masks and counts.

Everything works on one clip, uint8 (F, H, W, 3), in the video's own pixels; callers convert to the
prompt's units. Polarity is the modality's: objects are brighter than the background in
fluorescence and dark-field ("bright"), darker in bright-field and phase contrast ("dark").
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Signal:
  """Foreground signal (F, H, W) float, positive on objects, and its per-clip detection threshold."""

  values: np.ndarray
  threshold: float
  noise: float


def grey(video: np.ndarray) -> np.ndarray:
  """uint8 (F, H, W, 3) -> float (F, H, W) in [0, 1], the mean of the channels."""
  if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape[:3]) < 1:
    raise ValueError(f"expected a video (F, H, W, 3), got shape {video.shape}")
  return video.astype(np.float64).mean(axis=-1) / 255.0


def foreground(video: np.ndarray, *, polarity: str, background: str = "frame") -> Signal:
  """Background-subtracted signal of a clip, oriented so that objects are positive.

  background: "frame" subtracts from each frame a plane (uneven illumination) fitted to its
  background pixels (objects cover a minority of the field); "rows" subtracts each row's median over
  time and columns, which also removes structures that are constant along x (a horizontal vessel's
  walls). The noise sigma comes from neighbouring-pixel differences (blind to smooth structure); the
  threshold is 5 noise sigmas and at least 25% of the clip's 99.9th percentile, so that faint texture
  is not an object.
  """
  if polarity not in ("bright", "dark"):
    raise ValueError(f"polarity must be 'bright' or 'dark', got {polarity!r}")
  g = grey(video)
  if background == "frame":
    bg = np.stack([_background_plane(frame) for frame in g])
  elif background == "rows":
    bg = np.median(g, axis=(0, 2), keepdims=True)
  else:
    raise ValueError(f"background must be 'frame' or 'rows', got {background!r}")
  values = (g - bg) if polarity == "bright" else (bg - g)
  diffs = np.diff(values, axis=2)
  noise = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / np.sqrt(2.0)
  threshold = max(5.0 * noise, 0.25 * float(np.percentile(values, 99.9)), 1.0 / 255.0)
  return Signal(values=values, threshold=threshold, noise=noise)


def _background_plane(frame: np.ndarray) -> np.ndarray:
  """A plane a + b y + c x fitted to the background of one frame (H, W): two passes that drop pixels
  farther than 2.5 MADs from the first fit (the objects)."""
  h, w = frame.shape
  yy, xx = np.mgrid[:h, :w]
  design = np.stack([np.ones(h * w), yy.ravel() / h, xx.ravel() / w], axis=1)
  values = frame.ravel()
  spread = np.abs(values - np.median(values))
  keep = spread <= 2.5 * 1.4826 * np.median(spread) + 1e-6
  for _ in range(2):
    coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
    resid = values - design @ coef
    mad = 1.4826 * np.median(np.abs(resid[keep]))
    keep = np.abs(resid) <= 2.5 * mad + 1e-6
  return (design @ coef).reshape(h, w)


def spots(frame: np.ndarray, threshold: float, radius: float) -> np.ndarray:
  """Centres (N, 2) (y, x) of bright spots of about `radius` px in a signal frame (H, W).

  A spot is a local maximum of the signal smoothed at sigma = radius / 2 (at least 0.5 px) over a
  (2 radius + 1) px window, above `threshold`; its centre is the signal-weighted centroid of the
  pixels within `radius` + 1 px that are above half the peak.
  """
  sigma = max(0.5, 0.5 * radius)
  smooth = ndimage.gaussian_filter(frame, sigma, mode="nearest")
  window = max(3, 2 * int(round(radius)) + 1)
  peaks = (smooth == ndimage.maximum_filter(smooth, size=window, mode="nearest")) & (smooth > threshold)
  labels, n = ndimage.label(peaks)
  if n == 0:
    return np.zeros((0, 2))
  seeds = np.array(ndimage.center_of_mass(peaks, labels, range(1, n + 1)))
  h, w = frame.shape
  yy, xx = np.mgrid[:h, :w]
  reach = radius + 1.0
  centres = []
  for y0, x0 in seeds:
    peak = smooth[int(round(y0)), int(round(x0))]
    near = ((yy - y0) ** 2 + (xx - x0) ** 2 <= reach * reach) & (smooth > 0.5 * peak)
    weight = np.where(near, np.clip(smooth, 0, None), 0.0)
    total = weight.sum()
    centres.append((float((weight * yy).sum() / total), float((weight * xx).sum() / total)) if total > 0 else (y0, x0))
  return np.array(centres)


def masks(signal: Signal) -> np.ndarray:
  """Object masks (F, H, W) bool: signal above threshold, holes filled (ring-shaped cells)."""
  above = signal.values > signal.threshold
  return np.stack([ndimage.binary_fill_holes(frame) for frame in above])


def blobs(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
  """Connected components of one mask (H, W): centres (N, 2) (y, x) and areas (N,) px^2."""
  labels, n = ndimage.label(mask)
  if n == 0:
    return np.zeros((0, 2)), np.zeros((0,))
  index = np.arange(1, n + 1)
  areas = ndimage.sum_labels(mask, labels, index)
  centres = np.array(ndimage.center_of_mass(mask, labels, index)).reshape(-1, 2)
  keep = areas >= min_area
  return centres[keep], areas[keep]
