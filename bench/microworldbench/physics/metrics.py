"""Per-process physics metrics of one video against the prompt's ground-truth parameters.

A prompt row (one line of the procedural dataset's prompts JSONL) gives `process`, `params` (units
px and frames of a `size` x `size` px field) and `size`; an optional `frame_stride` (default 1) says
how many simulation frames one video frame spans. Measurements are made in the video's pixels and
converted to the row's units (x by size / W, y by size / H, time by frame_stride), so a 32x32 video
of a 64 px prompt is scored in the prompt's units. Each process has checks with pass rules (below,
and `RULES`); a video passes when all its checks pass. Nothing detectable, or too little to fit,
gives NaN values and a failed video with a `reason`, never an exception.

Rules (`RULES`; n = number of one-axis steps measured):
- brownian: D by the covariance estimator (corrected for localisation noise; relative standard
  error ~sqrt(6 / n) for n Gaussian steps, a floor no tracker beats), |D / D_true - 1| <=
  max(0.15, 3 sqrt(6 / n)); MSD exponent alpha (log-log slope of the noise-corrected MSD over lags
  1..min(8, (F-1) // 2)) in [0.5, 1.5] (1 diffusive, 2 ballistic).
- poiseuille: cell speed u against lateral offset y from the vessel axis (the field's centre line),
  fitted by the prompt's no-slip profile u = c0 (1 - (y / R)^2) with one free amplitude c0, from
  >= 2 tracked cells (>= 3 frames each). The profile fits when R^2 >= 0.5 (clipped at -1; plug flow
  is far below 0) or the relative RMS residual RMS(u - fit) / c0 <= 0.15 (R^2 means little when the
  cells sit at similar offsets; plug flow leaves >= 0.22); centre-line speed |c0 / u_max - 1| <= 0.2.
- division: cells per frame (spots at the daughter radius inside the cell mask; a 3-frame running
  median removes one-frame miscounts at the constriction) start at 1, rise once, never exceed 2 or
  fall back, and end at 2 when the prompt's cleavage is complete by the video's last frame (either
  count is accepted when it is 40-100% done); the total cell area changes from the first to the
  last frames by a factor within [0.8, 1.6] (volume conservation makes the area of two touching
  daughters 2^(1/3) = 1.26 times the mother's; daughters as big as the mother double it).
- sedimentation: settling velocity (mean vertical step of particles above the floor)
  |v / v_true - 1| <= max(0.2, 3 SE_v), SE_v = sqrt(2 D / n) / v_true (negative v: rising).
- chemotaxis: run speed (median step length) |v / v_true - 1| <= 0.25; chemotactic index CI (mean
  cosine between a step and the direction to the source) >= -0.1: not swimming away. A 17-frame
  clip of 8-14 bacteria cannot always show the weak bias (ground-truth CI: mean 0.26, a few near 0),
  so CI is a guard against the wrong direction, and its value is reported.
- temporal (every process): flicker (mean |second difference| of the total foreground signal over
  frames, relative to its median) <= 0.15 is checked; object-count stability (count_cv, and
  count_reversals: the fraction of frames whose count differs from both neighbours' equal count) is
  reported only, since touching objects legitimately merge for a frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from microworldbench.physics import detect, tracks as tracklib

PROCESSES = ("brownian", "poiseuille", "division", "sedimentation", "chemotaxis")
REQUIRED_PARAMS = {
  "brownian": ("radius_px", "diffusion_px2_per_frame"),
  "poiseuille": ("cell_radius_px", "vessel_radius_px", "max_velocity_px_per_frame"),
  "division": ("cell_radius_px", "division_start_frame", "cleavage_frames"),
  "sedimentation": ("radius_px", "settling_velocity_px_per_frame", "diffusion_px2_per_frame"),
  "chemotaxis": ("run_speed_px_per_frame", "source_y_px", "source_x_px", "length_px"),
}
RULES = {
  "brownian/d_rel_err": "|D/D_true - 1| <= max(0.15, 3 sqrt(6/n))",
  "brownian/msd_exponent": "0.5 <= alpha <= 1.5",
  "poiseuille/profile_fit": "R^2 >= 0.5 or RMS(u - c0 (1 - (y/R)^2)) / c0 <= 0.15",
  "poiseuille/centre_speed_rel_err": "|c0/u_max - 1| <= 0.2",
  "division/count_sequence": "1 -> 2 once, never above 2",
  "division/area_ratio": "0.8 <= A_last/A_first <= 1.6",
  "sedimentation/v_rel_err": "|v/v_true - 1| <= max(0.2, 3 SE_v)",
  "chemotaxis/speed_rel_err": "|v/v_true - 1| <= 0.25",
  "chemotaxis/chemotactic_index": "CI >= -0.1",
  "temporal/flicker": "flicker <= 0.15",
}
_POLARITY = {
  "brownian": "bright",
  "chemotaxis": "bright",
  "poiseuille": "dark",
  "division": "dark",
  "sedimentation": "dark",
}


class _Measure:
  """One video in the prompt's units: the scale factors and helpers shared by the metrics."""

  def __init__(self, video: np.ndarray, row: dict):
    self.row, self.params = row, row["params"]
    self.size = float(row["size"])
    frames, height, width = video.shape[:3]
    self.num_frames = frames
    self.sy, self.sx = height / self.size, width / self.size  # video px per prompt px
    self.scale = math.sqrt(self.sy * self.sx)
    self.stride = float(row.get("frame_stride", 1))
    process = row["process"]
    self.signal = detect.foreground(
      video, polarity=_POLARITY[process], background="rows" if process == "poiseuille" else "frame"
    )

  def to_prompt(self, centres: np.ndarray) -> np.ndarray:
    """(N, 2) video px (y, x) -> prompt px (pixel centres at integer coordinates in both)."""
    scale = np.array([self.sy, self.sx])
    return (np.asarray(centres, dtype=np.float64).reshape(-1, 2) + 0.5) / scale - 0.5

  def spot_detections(self, radius_px: float) -> list[np.ndarray]:
    r = radius_px * self.scale
    return [self.to_prompt(detect.spots(f, self.signal.threshold, r)) for f in self.signal.values]


def validate_row(row: Any, where: str = "row") -> None:
  """Raises ValueError naming the missing or bad key of a prompt row."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
  for key in ("process", "params", "size"):
    if key not in row:
      raise ValueError(f"{where}: missing key {key!r} (need process, params, size)")
  if row["process"] not in PROCESSES:
    raise ValueError(f"{where}: process {row['process']!r} has no physics metric; expected one of {PROCESSES}")
  missing = [k for k in REQUIRED_PARAMS[row["process"]] if k not in row["params"]]
  if missing:
    raise ValueError(f"{where}: params of process {row['process']!r} lack {missing}")


def _check(value: float, passed: bool, rule: str) -> dict:
  return {
    "value": None if value is None or not np.isfinite(value) else float(value),
    "pass": bool(passed and value is not None and np.isfinite(value)),
    "rule": rule,
  }


def _brownian(m: _Measure) -> tuple[dict, dict, dict, list[int]]:
  p = m.params
  d_true = p["diffusion_px2_per_frame"]
  dets = m.spot_detections(p["radius_px"])
  max_step = max(4.5 * math.sqrt(2 * d_true * m.stride), 2 * p["radius_px"])
  tracks = tracklib.link(dets, max_step)
  d_est, noise_var, n = tracklib.covariance_diffusion(tracks)
  d_est /= m.stride
  max_lag = max(2, min(8, (m.num_frames - 1) // 2))
  lags, msd, counts = tracklib.msd_curve(tracks, max_lag)
  corrected = msd - 4 * noise_var if n else msd  # 2 axes x 2 sigma^2 of localisation noise
  ok = np.isfinite(corrected) & (corrected > 0) & (counts >= 4)
  alpha = float(np.polyfit(np.log(lags[ok]), np.log(corrected[ok]), 1)[0]) if ok.sum() >= 2 else math.nan
  rel = d_est / d_true - 1 if n else math.nan
  tol = max(0.15, 3 * math.sqrt(6 / n)) if n else math.nan
  checks = {
    "d_rel_err": _check(abs(rel), abs(rel) <= tol, RULES["brownian/d_rel_err"]),
    "msd_exponent": _check(alpha, 0.5 <= alpha <= 1.5, RULES["brownian/msd_exponent"]),
  }
  metrics = {
    "d_est": d_est,
    "d_true": d_true,
    "d_rel_err": abs(rel),
    "d_tolerance": tol,
    "msd_exponent": alpha,
    "localisation_noise_px": math.sqrt(noise_var) if n else math.nan,
    "num_steps": n,
    "num_tracks": int(len(tracks)),
  }
  curves = {
    "lags": (lags * m.stride).tolist(),
    "msd": msd.tolist(),
    "msd_true": (4 * d_true * lags * m.stride).tolist(),
  }
  return metrics, checks, curves, [len(d) for d in dets]


def _poiseuille(m: _Measure) -> tuple[dict, dict, dict, list[int]]:
  p = m.params
  r, umax, big_r = p["cell_radius_px"], p["max_velocity_px_per_frame"], p["vessel_radius_px"]
  # Spots at 1.2 cell radii: the smoothing fills the biconcave cells' pale centres, and cells that
  # overlap while overtaking stay apart when their centres are more than ~1.2 radii apart.
  all_dets = m.spot_detections(1.2 * r)
  counts = [len(d) for d in all_dets]
  # Cells crossing the x edges (they wrap around) are not tracked.
  dets = [d[(d[:, 1] > r) & (d[:, 1] < m.size - r)] for d in all_dets]
  tracks = tracklib.link(dets, max_step=1.5 * umax * m.stride + 0.5 * r, predict=True)
  tracks = tracklib.split_at_jumps(tracks, axis=0, max_jump=0.5 * r)  # cells keep their lane
  seg = tracklib.segment_velocities(tracks, min_length=3)
  y = seg[:, 0] - m.size / 2 if len(seg) else np.zeros(0)
  u = seg[:, 2] / m.stride if len(seg) else np.zeros(0)
  c0 = r2 = rmse = math.nan
  if len(seg) >= 2:
    shape = 1 - (y / big_r) ** 2  # no slip at the prompt's vessel wall
    c0 = float((u * shape).sum() / (shape * shape).sum())
    resid = u - c0 * shape
    rmse = float(np.sqrt((resid**2).mean()) / abs(c0)) if c0 != 0 else math.inf
    total = float(((u - u.mean()) ** 2).sum())
    r2 = max(-1.0, 1 - float((resid**2).sum()) / total) if total > 0 else -1.0
  rel = abs(c0 / umax - 1) if np.isfinite(c0) else math.nan
  profile_ok = r2 >= 0.5 or rmse <= 0.15
  checks = {
    "profile_fit": _check(r2 if np.isfinite(rmse) else math.nan, profile_ok, RULES["poiseuille/profile_fit"]),
    "centre_speed_rel_err": _check(rel, rel <= 0.2, RULES["poiseuille/centre_speed_rel_err"]),
  }
  metrics = {
    "profile_rmse": rmse,
    "parabola_r2": r2,
    "centre_speed": c0,
    "centre_speed_true": umax,
    "centre_speed_rel_err": rel,
    "num_segments": int(len(seg)),
  }
  curves = {"offset": y.tolist(), "speed": u.tolist(), "vessel_radius": big_r, "u_max": umax, "centre_speed": c0}
  return metrics, checks, curves, counts


def _division(m: _Measure) -> tuple[dict, dict, dict, list[int]]:
  p = m.params
  r0 = p["cell_radius_px"]
  rd = r0 * 2 ** (-1 / 3)
  masks = detect.masks(m.signal)
  counts, areas = [], []
  for mask, values in zip(masks, m.signal.values):
    # A cell is a spot of the daughter's size inside the cell mask (two touching daughters are two).
    counts.append(len(detect.spots(np.where(mask, values, 0.0), m.signal.threshold, rd * m.scale)))
    _, blob_areas = detect.blobs(mask, min_area=0.25 * math.pi * (rd * m.scale) ** 2)
    areas.append(float(blob_areas.sum()) / (m.sy * m.sx))
  last_sim_frame = (m.num_frames - 1) * m.stride
  progress = (last_sim_frame - p["division_start_frame"]) / max(p["cleavage_frames"], 1)
  expected_final = 2 if progress >= 1 else None if progress >= 0.4 else 1
  c = np.array(counts)
  if len(c) >= 3:
    c = ndimage.median_filter(c, size=3, mode="nearest")
  rises = int((np.diff(c) > 0).sum())
  falls = int((np.diff(c) < 0).sum())
  sequence_ok = (
    len(c) > 0
    and c[0] == 1
    and c.max() <= 2
    and falls == 0
    and rises <= 1
    and (expected_final is None or c[-1] == expected_final)
  )
  k = max(1, min(2, m.num_frames // 4))
  first, last = np.mean(areas[:k]), np.mean(areas[-k:])
  ratio = last / first if first > 0 else math.nan
  checks = {
    "count_sequence": _check(float(sequence_ok), sequence_ok, RULES["division/count_sequence"]),
    "area_ratio": _check(ratio, 0.8 <= ratio <= 1.6, RULES["division/area_ratio"]),
  }
  metrics = {
    "count_sequence_ok": float(sequence_ok),
    "max_count": int(c.max()) if len(c) else 0,
    "count_rises": rises,
    "count_falls": falls,
    "area_ratio": ratio,
    "area_ratio_true": 2 ** (1 / 3) if progress >= 1 else math.nan,
  }
  expected = [
    1 if (t * m.stride - p["division_start_frame"]) / max(p["cleavage_frames"], 1) < 0.6 else 2
    for t in range(m.num_frames)
  ]
  curves = {
    "counts": [int(x) for x in c],
    "raw_counts": [int(x) for x in counts],
    "expected_counts": expected,
    "areas": areas,
    "area_true": math.pi * r0 * r0,
  }
  return metrics, checks, curves, counts


def _sedimentation(m: _Measure) -> tuple[dict, dict, dict, list[int]]:
  p = m.params
  r, v_true, d_true = p["radius_px"], p["settling_velocity_px_per_frame"], p["diffusion_px2_per_frame"]
  dets = m.spot_detections(r)
  max_step = (v_true + 4.5 * math.sqrt(2 * d_true)) * m.stride + r
  tracks = tracklib.link(dets, max_step)
  floor = m.size - 1 - r
  start, end = tracks[:, :-1], tracks[:, 1:]
  free = ~np.isnan(start).any(-1) & ~np.isnan(end).any(-1) & (start[..., 0] < floor - 1.0) & (end[..., 0] < floor - 1.0)
  steps = (end - start)[free] / m.stride
  n = len(steps)
  v_est = float(steps[:, 0].mean()) if n else math.nan
  floating = np.where((tracks[..., 0] < floor - 1.0)[..., None], tracks, np.nan)
  d_x = tracklib.covariance_diffusion(floating, axes=(1,))[0] / m.stride  # lateral: no drift
  se = math.sqrt(2 * d_true / m.stride / n) / v_true if n else math.nan
  rel = abs(v_est / v_true - 1) if n else math.nan
  tol = max(0.2, 3 * se) if n else math.nan
  checks = {"v_rel_err": _check(rel, rel <= tol, RULES["sedimentation/v_rel_err"])}
  metrics = {
    "v_est": v_est,
    "v_true": v_true,
    "v_rel_err": rel,
    "v_tolerance": tol,
    "d_x_est": d_x,
    "d_true": d_true,
    "num_steps": n,
  }
  mean_y = [
    float(np.nanmean(tracks[:, t, 0])) if np.isfinite(tracks[:, t, 0]).any() else math.nan for t in range(m.num_frames)
  ]
  curves = {"frames": [t * m.stride for t in range(m.num_frames)], "mean_y": mean_y, "v_true": v_true, "floor": floor}
  return metrics, checks, curves, [len(d) for d in dets]


def _chemotaxis(m: _Measure) -> tuple[dict, dict, dict, list[int]]:
  p = m.params
  v_true, length = p["run_speed_px_per_frame"], p["length_px"]
  source = np.array([p["source_y_px"], p["source_x_px"]])
  dets = m.spot_detections(0.5 * length)
  tracks = tracklib.link(dets, max_step=1.6 * v_true * m.stride + 1.0, predict=True)
  start, end = tracks[:, :-1].reshape(-1, 2), tracks[:, 1:].reshape(-1, 2)
  ok = ~np.isnan(start).any(-1) & ~np.isnan(end).any(-1)
  step, start = (end - start)[ok], start[ok]
  n = len(step)
  speed = float(np.median(np.linalg.norm(step, axis=1))) / m.stride if n else math.nan
  to_source = source - start
  cos = (step * to_source).sum(-1) / np.maximum(np.linalg.norm(step, axis=1) * np.linalg.norm(to_source, axis=1), 1e-9)
  ci = float(cos.mean()) if n else math.nan
  rel = abs(speed / v_true - 1) if n else math.nan
  checks = {
    "speed_rel_err": _check(rel, rel <= 0.25, RULES["chemotaxis/speed_rel_err"]),
    "chemotactic_index": _check(ci, ci >= -0.1, RULES["chemotaxis/chemotactic_index"]),
  }
  metrics = {"speed_est": speed, "speed_true": v_true, "speed_rel_err": rel, "chemotactic_index": ci, "num_steps": n}
  dist = [
    float(np.nanmean(np.linalg.norm(tracks[:, t] - source, axis=-1)))
    if np.isfinite(tracks[:, t]).all(-1).any()
    else math.nan
    for t in range(m.num_frames)
  ]
  curves = {"frames": [t * m.stride for t in range(m.num_frames)], "distance_to_source": dist}
  return metrics, checks, curves, [len(d) for d in dets]


_PROCESS_METRICS = {
  "brownian": _brownian,
  "poiseuille": _poiseuille,
  "division": _division,
  "sedimentation": _sedimentation,
  "chemotaxis": _chemotaxis,
}


def temporal(signal: detect.Signal, counts: list[int]) -> tuple[dict, dict]:
  """Generic temporal-consistency metrics of any clip: flicker (checked) and count stability.

  flicker: mean |S_{t-1} - 2 S_t + S_{t+1}| / median S over frames, S_t the frame's total positive
  foreground signal (objects that move keep S; objects that blink or fade in and out change it).
  count_cv (std / mean of the per-frame object count) and count_reversals (fraction of frames whose
  count differs from the equal counts of both neighbours) are reported: touching objects legitimately
  merge for a frame, so they are not checks.
  """
  total = np.clip(signal.values - signal.noise, 0, None).sum(axis=(1, 2))
  level = float(np.median(total))
  if len(total) >= 3 and level > 0:
    flicker = float(np.abs(total[2:] - 2 * total[1:-1] + total[:-2]).mean() / level)
  else:
    flicker = math.nan
  c = np.asarray(counts)
  reversals = ((c[1:-1] != c[:-2]) & (c[2:] == c[:-2])) if len(c) >= 3 else np.zeros(0, bool)
  reversal_rate = float(reversals.mean()) if len(reversals) else math.nan
  count_cv = float(c.std() / c.mean()) if len(c) and c.mean() > 0 else math.nan
  metrics = {"flicker": flicker, "count_reversals": reversal_rate, "count_cv": count_cv}
  checks = {"flicker": _check(flicker, flicker <= 0.15, RULES["temporal/flicker"])}
  return metrics, checks


def score_video(video: np.ndarray, row: dict) -> dict:
  """Physics metrics of one video uint8 (F, H, W, 3) against its prompt row.

  Returns {"id", "process", "pass", "reason", "metrics": {name: float}, "checks": {name: {"value",
  "pass", "rule"}}, "curves": {...}} where names are "<process>/<metric>" and "temporal/<metric>".
  """
  validate_row(row)
  process = row["process"]
  result = {
    "id": row.get("id"),
    "process": process,
    "pass": False,
    "reason": None,
    "metrics": {},
    "checks": {},
    "curves": {},
  }
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 2:
    result["reason"] = f"expected a video (F >= 2, H, W, 3), got shape {video.shape}"
    return result
  m = _Measure(video, row)
  metrics, checks, curves, counts = _PROCESS_METRICS[process](m)
  t_metrics, t_checks = temporal(m.signal, counts)
  result["metrics"] = {
    **{f"{process}/{k}": _num(v) for k, v in metrics.items()},
    **{f"temporal/{k}": _num(v) for k, v in t_metrics.items()},
  }
  result["checks"] = {
    **{f"{process}/{k}": v for k, v in checks.items()},
    **{f"temporal/{k}": v for k, v in t_checks.items()},
  }
  result["curves"] = {**curves, "counts_per_frame": [int(x) for x in counts]}
  failed = [k for k, v in result["checks"].items() if not v["pass"]]
  result["pass"] = not failed
  if not any(counts):
    result["reason"] = "no objects detected"
  elif failed:
    result["reason"] = "failed: " + ", ".join(failed)
  return result


def _num(value: Any) -> float:
  return float(value) if value is not None else math.nan
