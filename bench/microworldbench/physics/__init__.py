"""Physics-fidelity metrics: generated videos of the procedural micro-world processes measured
against the ground-truth parameters of their prompts (numpy + scipy; no JAX).

  from microworldbench.physics import score_videos
  scores = score_videos(videos, rows)   # {"physics/pass_rate": 0.6, "physics/brownian/d_rel_err": ...}

Modules: detect (background, spots, masks, cell counts), tracks (linking, MSD, diffusion, velocities),
metrics (per-process checks and their thresholds: `metrics.RULES`), report (plots), command (the
`microworldbench physics` subcommand).
"""

from __future__ import annotations

import math

import numpy as np

from microworldbench.physics.metrics import PROCESSES, RULES, score_video, validate_row

__all__ = ["PROCESSES", "RULES", "score_video", "score_videos", "summarize", "validate_row"]


def summarize(results: list[dict]) -> dict[str, float]:
  """Flat scores of per-video results (from `score_video`): means of every metric per process
  ("physics/<process>/<metric>", NaNs skipped), pass rates per process and check
  ("physics/<process>/pass_rate", "physics/check/<name>"), and "physics/pass_rate" over all videos."""
  scores: dict[str, float] = {}
  values: dict[str, list[float]] = {}
  for r in results:
    for name, value in r["metrics"].items():
      values.setdefault(f"physics/{name}", []).append(value)
    for name, check in r["checks"].items():
      values.setdefault(f"physics/check/{name}", []).append(float(check["pass"]))
    values.setdefault(f"physics/{r['process']}/pass_rate", []).append(float(r["pass"]))
    values.setdefault("physics/pass_rate", []).append(float(r["pass"]))
  for name, vals in values.items():
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    scores[name] = float(np.mean(finite)) if finite else math.nan
  return dict(sorted(scores.items()))


def score_videos(videos: list[np.ndarray], rows: list[dict]) -> dict[str, float]:
  """Scores videos uint8 (F, H, W, 3) against their prompt rows (same order); see `summarize`.

  For the trainer's periodic evaluation: a few prompts of the procedural dataset, sampled at the
  model's resolution (metrics convert to the rows' units), logged next to the loss.
  """
  if len(videos) != len(rows):
    raise ValueError(f"score_videos: {len(videos)} videos but {len(rows)} prompt rows")
  return summarize([score_video(v, row) for v, row in zip(videos, rows)])
