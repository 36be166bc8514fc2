"""Linking detections into tracks, and the statistics fitted on them (MSD, drift, speed).

A track is an array (F, 2) of (y, x) positions with NaN in the frames where it has no detection;
tracks of one clip stack to (N, F, 2).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def link(detections: list[np.ndarray], max_step: float, *, predict: bool = False) -> np.ndarray:
  """Links per-frame centres [(N_t, 2)] * F into tracks (N, F, 2), NaN where a track is absent.

  Frame to frame, detections are matched one-to-one by minimum total distance (Hungarian), and a
  match farther than `max_step` ends the track (and starts a new one). With `predict`, a track that
  has two positions is matched from its constant-velocity prediction instead of its last position.
  Tracks do not bridge gaps: a missed detection splits a track in two.
  """
  num_frames = len(detections)
  tracks: list[np.ndarray] = []
  active: list[int] = []  # indices into tracks alive at the previous frame
  for t, points in enumerate(detections):
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    matched_points: set[int] = set()
    survivors: list[int] = []
    if active and len(points):
      expected = []
      for k in active:
        last = tracks[k][t - 1]
        before = tracks[k][t - 2] if t >= 2 else np.full(2, np.nan)
        expected.append(2 * last - before if predict and not np.isnan(before).any() else last)
      cost = np.linalg.norm(np.array(expected)[:, None, :] - points[None, :, :], axis=-1)
      rows, cols = linear_sum_assignment(cost)
      for r, c in zip(rows, cols):
        if cost[r, c] <= max_step:
          tracks[active[r]][t] = points[c]
          matched_points.add(c)
          survivors.append(active[r])
    for c in range(len(points)):
      if c not in matched_points:
        track = np.full((num_frames, 2), np.nan)
        track[t] = points[c]
        tracks.append(track)
        survivors.append(len(tracks) - 1)
    active = survivors
  return np.array(tracks).reshape(-1, num_frames, 2)


def displacements(tracks: np.ndarray, lag: int) -> np.ndarray:
  """All displacements (M, 2) over `lag` frames within tracks (N, F, 2) (no NaN rows)."""
  if lag >= tracks.shape[1]:
    return np.zeros((0, 2))
  d = tracks[:, lag:] - tracks[:, :-lag]
  d = d.reshape(-1, 2)
  return d[~np.isnan(d).any(axis=1)]


def msd_curve(tracks: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean squared displacement per lag 1..max_lag: (lags, msd, counts); msd is NaN for no data."""
  lags = np.arange(1, max_lag + 1)
  msd, counts = [], []
  for lag in lags:
    d = displacements(tracks, lag)
    counts.append(len(d))
    msd.append(float((d**2).sum(axis=1).mean()) if len(d) else np.nan)
  return lags, np.array(msd), np.array(counts)


def covariance_diffusion(tracks: np.ndarray, axes: tuple[int, ...] = (0, 1)) -> tuple[float, float, int]:
  """Diffusion coefficient per axis corrected for localisation noise, the noise variance, and n steps.

  The covariance-based estimator (Vestergaard, Blainey and Flyvbjerg 2014), over the given axes:
  D = <dx_n^2> / 2 + <dx_n dx_{n+1}>, with drift removed (the mean step); the noise variance per
  axis is -<dx_n dx_{n+1}> (clipped at 0). Unbiased under white localisation noise, where the lag-1
  MSD alone is biased up by twice the noise variance; its relative standard error for n steps of
  pure diffusion is about sqrt(6 / n) (sqrt(2 / n) for the biased lag-1 MSD).
  """
  steps = tracks[:, 1:] - tracks[:, :-1]  # (N, F-1, 2)
  estimates, noises, weights, total = [], [], [], 0
  for axis in axes:
    s = steps[..., axis]
    valid = ~np.isnan(s)
    n = int(valid.sum())
    if n == 0:
      continue
    drift = float(s[valid].mean())
    c = s - drift
    sq = float((c[valid] ** 2).mean())
    pair = valid[:, 1:] & valid[:, :-1]
    cross = float((c[:, 1:][pair] * c[:, :-1][pair]).mean()) if pair.any() else 0.0
    estimates.append(sq / 2 + cross)
    noises.append(max(0.0, -cross))
    weights.append(n)
    total += n
  if not total:
    return float("nan"), float("nan"), 0
  return float(np.average(estimates, weights=weights)), float(np.average(noises, weights=weights)), total


def segment_velocities(tracks: np.ndarray, min_length: int = 3) -> np.ndarray:
  """Per track segment of >= min_length consecutive frames: (M, 3) rows (median y, vy, vx) px/frame.

  Velocities are the medians of the frame-to-frame steps (robust to one wrong link).
  """
  rows = []
  for track in tracks:
    present = ~np.isnan(track).any(axis=1)
    t = 0
    while t < len(track):
      if not present[t]:
        t += 1
        continue
      end = t
      while end < len(track) and present[end]:
        end += 1
      if end - t >= min_length:
        steps = np.diff(track[t:end], axis=0)
        vy, vx = np.median(steps, axis=0)
        rows.append((float(np.median(track[t:end, 0])), float(vy), float(vx)))
      t = end
  return np.array(rows).reshape(-1, 3)


def split_at_jumps(tracks: np.ndarray, axis: int, max_jump: float) -> np.ndarray:
  """Tracks (N, F, 2) cut wherever a step along `axis` exceeds max_jump (a link to another object
  when objects cannot move that way): the rest of the track becomes a new track."""
  out = []
  for track in tracks:
    track = track.copy()
    jumps = np.nonzero(np.abs(np.diff(track[:, axis])) > max_jump)[0]  # NaN compares False
    for t in reversed(jumps):
      rest = np.full_like(track, np.nan)
      rest[t + 1 :] = track[t + 1 :]
      track[t + 1 :] = np.nan
      out.append(rest)
    out.append(track)
  return np.array(out).reshape(-1, tracks.shape[1], 2)
