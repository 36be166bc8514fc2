"""Physics-fidelity metrics: ground-truth procedural clips pass, deliberately wrong clips fail.

Ground truth comes from microverse_jax.datasets.microsim_synth.processes; the wrong clips (ballistic motion, plug flow,
division into three, a blinking cell, particles rising, swimming away from the source) are drawn
with the same renderer from tracks made here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from microverse_jax.datasets.microsim_synth import processes
from microworldbench import cli
from microworldbench.physics import RULES, score_video, score_videos, tracks as tracklib

SIZE, FRAMES = 64, 17
BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")


def spec_of(process: str, k: int = 0, seed: int = 0, num_frames: int = FRAMES):
  """The k-th clip spec of `process` in the dataset with base `seed`."""
  index = processes.PROCESSES.index(process) + len(processes.PROCESSES) * k
  return processes.clip_spec(index, seed=seed, num_frames=num_frames, size=SIZE, fps=8.0)


def row_of(spec, **extra) -> dict:
  return {"id": f"clip{spec.seed}", "process": spec.process, "params": dict(spec.params), "size": SIZE, **extra}


def ground_truth(process: str, k: int = 0, seed: int = 0):
  spec = spec_of(process, k, seed)
  video = processes.render_clip(spec.process, spec.params, num_frames=FRAMES, size=SIZE, seed=spec.seed)
  return video, row_of(spec)


def render(process: str, params: dict, tracks: np.ndarray, state: dict, seed: int = 0) -> np.ndarray:
  """Draws tracks (F, N, 2) like `processes.render_clip` does: the same optics blur and noise."""
  rng = np.random.default_rng(seed)
  image = processes._draw(process, params, tracks, state, SIZE)  # pylint: disable=protected-access
  image = processes._gaussian_blur(image, sigma=0.7)  # pylint: disable=protected-access
  image = image + rng.normal(0.0, 0.02, image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def downscale(video: np.ndarray, frames: int = 9) -> np.ndarray:
  """The tiny model's format: the first `frames` frames, 2x2 area-averaged to 32x32."""
  f, h, w, c = video[:frames].shape
  return video[:frames].reshape(f, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Ground truth passes (several seeds, full and tiny format).
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", processes.PROCESSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_ground_truth_clips_pass(process, seed):
  for k in range(2):
    video, row = ground_truth(process, k, seed)
    result = score_video(video, row)
    assert result["pass"], (process, seed, k, result["reason"], result["metrics"])
    assert all(c["pass"] for c in result["checks"].values())
    assert result["checks"], "every process has checks"


def test_ground_truth_brownian_estimates_diffusion():
  errors = []
  for k in range(3):
    video, row = ground_truth("brownian", k)
    m = score_video(video, row)["metrics"]
    errors.append(m["brownian/d_rel_err"])
    assert 0.5 <= m["brownian/msd_exponent"] <= 1.5
  assert np.mean(errors) < 0.15, errors


@pytest.mark.parametrize("process", ["brownian", "poiseuille", "division", "sedimentation"])
def test_metrics_are_scale_aware(process):
  """A 32x32, 9-frame copy of a 64 px clip is scored in the prompt's units and still passes."""
  video, row = ground_truth(process, 1)
  full, tiny = score_video(video, row), score_video(downscale(video), row)
  assert tiny["pass"], (tiny["reason"], tiny["metrics"])
  if process == "brownian":
    d_true = row["params"]["diffusion_px2_per_frame"]
    assert abs(tiny["metrics"]["brownian/d_est"] / d_true - 1) < 0.35
  if process == "poiseuille":
    speed = full["metrics"]["poiseuille/centre_speed"]
    assert tiny["metrics"]["poiseuille/centre_speed"] == pytest.approx(speed, rel=0.2)


# ---------------------------------------------------------------------------------------------
# Deliberately wrong clips fail, each on the metric that measures what is wrong.
# ---------------------------------------------------------------------------------------------
def test_ballistic_motion_fails_msd_exponent():
  spec = spec_of("brownian", 0)
  p = spec.params
  rng = np.random.default_rng(0)
  n = p["num_particles"]
  speed = math.sqrt(4 * p["diffusion_px2_per_frame"])  # the diffusive lag-1 MSD, but straight runs
  heading = rng.uniform(0, 2 * np.pi, n)
  start = rng.uniform(12, SIZE - 12, (n, 2))
  t = np.arange(FRAMES)[:, None, None]
  tracks = start + t * speed * np.stack([np.sin(heading), np.cos(heading)], -1)
  tracks = np.clip(tracks, 1, SIZE - 2)
  video = render("brownian", p, tracks, {"radius": np.full((FRAMES, n), p["radius_px"])})
  result = score_video(video, row_of(spec))
  assert not result["checks"]["brownian/msd_exponent"]["pass"]
  assert result["metrics"]["brownian/msd_exponent"] > 1.6
  assert not result["pass"]


def test_wrong_diffusion_coefficient_fails():
  video, row = ground_truth("brownian", 0)
  row["params"]["diffusion_px2_per_frame"] *= 2.5  # the prompt asked for faster diffusion
  result = score_video(video, row)
  assert not result["checks"]["brownian/d_rel_err"]["pass"]
  assert result["checks"]["brownian/msd_exponent"]["pass"]


def poiseuille_tracks(params: dict, speeds) -> tuple[np.ndarray, dict]:
  n, r, big_r = params["num_cells"], params["cell_radius_px"], params["vessel_radius_px"]
  offsets = np.linspace(-(big_r - r), big_r - r, n)
  x0 = np.linspace(0, SIZE, n, endpoint=False)
  t = np.arange(FRAMES)[:, None]
  y = np.broadcast_to(SIZE / 2 + offsets, (FRAMES, n))
  return np.stack([y, x0 + speeds(offsets) * t], -1), {"radius": np.full((FRAMES, n), r)}


def test_plug_flow_fails_parabola_fit_and_slow_flow_fails_centre_speed():
  spec = spec_of("poiseuille", 0)
  p = dict(spec.params, num_cells=6)
  umax, big_r = p["max_velocity_px_per_frame"], p["vessel_radius_px"]
  parabolic = render("poiseuille", p, *poiseuille_tracks(p, lambda y: umax * (1 - (y / big_r) ** 2)))
  plug = render("poiseuille", p, *poiseuille_tracks(p, lambda y: np.full_like(y, 2 / 3 * umax)))
  slow = render("poiseuille", p, *poiseuille_tracks(p, lambda y: 0.6 * umax * (1 - (y / big_r) ** 2)))
  row = dict(row_of(spec), params=p)
  good, bad, slow = score_video(parabolic, row), score_video(plug, row), score_video(slow, row)
  assert good["pass"], (good["reason"], good["metrics"])
  assert good["metrics"]["poiseuille/parabola_r2"] > 0.95
  assert good["metrics"]["poiseuille/centre_speed_rel_err"] < 0.05
  assert not bad["checks"]["poiseuille/profile_fit"]["pass"]
  assert bad["metrics"]["poiseuille/parabola_r2"] < 0 and bad["metrics"]["poiseuille/profile_rmse"] > 0.2
  assert slow["checks"]["poiseuille/profile_fit"]["pass"]  # the right shape ...
  assert not slow["checks"]["poiseuille/centre_speed_rel_err"]["pass"]  # ... at the wrong speed
  assert slow["metrics"]["poiseuille/centre_speed_rel_err"] == pytest.approx(0.4, abs=0.05)


def test_division_into_three_fails_count():
  spec = spec_of("division", 0)
  p = spec.params
  r0, start, duration = p["cell_radius_px"], p["division_start_frame"], p["cleavage_frames"]
  rd = r0 * 3 ** (-1 / 3)
  progress = np.clip((np.arange(FRAMES) - start) / duration, 0, 1)
  angles = np.deg2rad([90, 210, 330])
  directions = np.stack([-np.sin(angles), np.cos(angles)], -1)  # (3, 2) (dy, dx)
  distance = progress * rd / np.sin(np.pi / 3)  # touching at the end: centres 2 rd apart
  tracks = SIZE / 2 + distance[:, None, None] * directions[None]
  radius = np.repeat((r0 + (rd - r0) * progress)[:, None], 3, axis=1)
  result = score_video(render("division", p, tracks, {"radius": radius}), row_of(spec))
  assert not result["checks"]["division/count_sequence"]["pass"]
  assert result["metrics"]["division/max_count"] == 3


def test_division_without_volume_conservation_fails_area():
  spec = spec_of("division", 0)
  p = spec.params
  r0, start, duration = p["cell_radius_px"], p["division_start_frame"], p["cleavage_frames"]
  progress = np.clip((np.arange(FRAMES) - start) / duration, 0, 1)
  axis = np.array([0.0, 1.0])
  tracks = SIZE / 2 + (progress * r0)[:, None, None] * np.array([1.0, -1.0])[None, :, None] * axis
  radius = np.full((FRAMES, 2), r0 * 1.0)  # daughters as big as the mother: area doubles
  result = score_video(render("division", p, tracks, {"radius": radius}), row_of(spec))
  assert not result["checks"]["division/area_ratio"]["pass"]
  assert result["metrics"]["division/area_ratio"] > 1.6


def test_blinking_cell_fails_flicker():
  video, row = ground_truth("division", 0)
  good = score_video(video, row)
  blink = video.copy()
  background = np.median(video[1::2], axis=(1, 2), keepdims=True).astype(np.uint8)
  blink[1::2] = background  # the cell vanishes in every other frame
  bad = score_video(blink, row)
  assert good["checks"]["temporal/flicker"]["pass"]
  assert not bad["checks"]["temporal/flicker"]["pass"]
  assert bad["metrics"]["temporal/flicker"] > 5 * good["metrics"]["temporal/flicker"]
  assert bad["metrics"]["temporal/count_reversals"] > 0.5


def test_rising_particles_fail_sedimentation():
  video, row = ground_truth("sedimentation", 0)
  result = score_video(video[:, ::-1], row)  # flipped upside down: the particles rise
  assert not result["checks"]["sedimentation/v_rel_err"]["pass"]
  assert result["metrics"]["sedimentation/v_est"] < 0


def test_swimming_away_fails_chemotaxis():
  video, row = ground_truth("chemotaxis", 0)
  good = score_video(video, row)
  p = row["params"]
  opposite = {"source_y_px": SIZE - 1 - p["source_y_px"], "source_x_px": SIZE - 1 - p["source_x_px"]}
  away = dict(row, params=dict(p, **opposite))
  bad = score_video(video, away)  # the prompt's source is the opposite corner
  assert good["metrics"]["chemotaxis/chemotactic_index"] > 0.05
  assert not bad["checks"]["chemotaxis/chemotactic_index"]["pass"]
  assert bad["metrics"]["chemotaxis/chemotactic_index"] < 0


# ---------------------------------------------------------------------------------------------
# Robustness, summaries, the command.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", processes.PROCESSES)
def test_nothing_detectable_fails_with_a_reason(process):
  _, row = ground_truth(process, 0)
  result = score_video(np.full((9, 32, 32, 3), 128, np.uint8), row)
  assert not result["pass"]
  assert result["reason"] == "no objects detected"
  assert all(not c["pass"] for name, c in result["checks"].items() if name.startswith(process))


def test_bad_rows_and_shapes():
  _, row = ground_truth("brownian", 0)
  with pytest.raises(ValueError, match="missing key 'size'"):
    score_video(np.zeros((4, 8, 8, 3), np.uint8), {k: v for k, v in row.items() if k != "size"})
  with pytest.raises(ValueError, match="lack"):
    score_video(np.zeros((4, 8, 8, 3), np.uint8), dict(row, params={}))
  with pytest.raises(ValueError, match="no physics metric"):
    score_video(np.zeros((4, 8, 8, 3), np.uint8), dict(row, process="mitosis"))
  result = score_video(np.zeros((1, 8, 8, 3), np.uint8), row)
  assert not result["pass"] and "expected a video" in result["reason"]


def test_score_videos_flat_scores():
  clips = [ground_truth(p, 0) for p in ("brownian", "division")]
  blank = np.zeros((9, 32, 32, 3), np.uint8)
  scores = score_videos([c[0] for c in clips] + [blank], [c[1] for c in clips] + [clips[0][1]])
  assert scores["physics/pass_rate"] == pytest.approx(2 / 3)
  assert scores["physics/brownian/pass_rate"] == pytest.approx(0.5)
  assert scores["physics/division/pass_rate"] == 1.0
  assert math.isfinite(scores["physics/brownian/d_rel_err"])  # the blank clip's NaN is skipped
  assert scores["physics/check/temporal/flicker"] == pytest.approx(2 / 3)
  assert all(isinstance(v, float) for v in scores.values())
  with pytest.raises(ValueError, match="2 videos but 1"):
    score_videos([blank, blank], [clips[0][1]])


def test_tracking_links_and_diffusion_estimator():
  rng = np.random.default_rng(0)
  apart = np.arange(400)[:, None, None] * 100.0  # particles far apart: linking is unambiguous
  true = np.cumsum(rng.normal(0, math.sqrt(2 * 0.5), (400, 30, 2)), axis=1) + apart
  noisy = true + rng.normal(0, 0.3, true.shape)  # localisation noise biases the lag-1 MSD up
  linked = tracklib.link([noisy[:, t] for t in range(30)], max_step=20.0)
  assert linked.shape == (400, 30, 2)
  d, noise_var, n = tracklib.covariance_diffusion(linked)
  assert d == pytest.approx(0.5, rel=0.05) and noise_var == pytest.approx(0.09, rel=0.3)
  assert n == 400 * 29 * 2
  steps = tracklib.displacements(linked, 1)
  assert (steps**2).sum(1).mean() / 4 > 0.55  # the naive estimator's bias, corrected above


def write_mp4(path: str, video: np.ndarray) -> None:
  import av

  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=8)
    stream.height, stream.width = video.shape[1:3]
    stream.pix_fmt = "yuv444p"
    stream.options = {"crf": "0", "preset": "ultrafast"}
    for frame in video:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def test_cli_physics_end_to_end(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  videos = tmp_path / "videos"
  videos.mkdir()
  rows = []
  for process in ("brownian", "poiseuille", "division"):
    video, row = ground_truth(process, 0)
    row["id"] = process
    write_mp4(str(videos / f"{process}.mp4"), video)
    rows.append(row)
  rows.append(dict(rows[0], id="missing"))
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  out, report = tmp_path / "phys.json", tmp_path / "report"
  code = cli.main(
    ["physics", "--videos", str(videos), "--prompts", str(prompts), "--out", str(out), "--report", str(report)]
  )
  assert code == 0
  data = json.loads(out.read_text())
  by_id = {v["id"]: v for v in data["videos"]}
  assert [by_id[p]["pass"] for p in ("brownian", "poiseuille", "division")] == [True, True, True]
  assert not by_id["missing"]["pass"] and "missing video" in by_id["missing"]["reason"]
  assert data["summary"]["physics/pass_rate"] == pytest.approx(0.75)
  assert data["rules"] == RULES
  for name in ("brownian.png", "poiseuille.png", "division.png", "report.md"):
    assert (report / name).stat().st_size > 0
  assert "3/4 videos pass" in capsys.readouterr().out


def test_cli_physics_bad_prompts(tmp_path, capsys):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"id": "a", "process": "brownian", "params": {}, "size": 64}\n')
  code = cli.main(["physics", "--videos", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "o.json")])
  assert code == 2
  assert "prompts.jsonl:1" in capsys.readouterr().err
  assert not (tmp_path / "o.json").exists()


def test_physics_imports_without_jax():
  code = """
import importlib.abc, sys
class _NoJax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax", "microverse_jax", "data"):
      raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, _NoJax())
import microworldbench.physics, microworldbench.physics.command, microworldbench.physics.report
"""
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=BENCH_DIR)
  )
  assert proc.returncode == 0, proc.stderr
