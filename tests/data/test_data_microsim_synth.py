"""microsim_synth: the physics is right, rendering is deterministic, the dataset and prompts agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, video
from microverse_jax.datasets.microsim_synth import (
  PROCESSES,
  caption,
  clip_spec,
  export_prompts,
  render_clip,
  sample_params,
  simulate_tracks,
)

BIG = 20000  # a field so large that walls never matter


def test_brownian_msd_and_step_statistics():
  D, F = 0.8, 21
  tracks = simulate_tracks(
    "brownian", {"num_particles": 4000, "radius_px": 1.0, "diffusion_px2_per_frame": D}, num_frames=F, size=BIG, seed=0
  ).astype(np.float64)
  steps = np.diff(tracks, axis=0)
  np.testing.assert_allclose(steps.std(axis=(0, 1)), np.sqrt(2 * D), rtol=0.02)  # per axis, dt = 1
  np.testing.assert_allclose(steps.mean(axis=(0, 1)), 0.0, atol=0.02)
  lag1 = (steps[1:] * steps[:-1]).mean() / steps.var()
  assert abs(lag1) < 0.02  # independent increments
  msd = ((tracks[-1] - tracks[0]) ** 2).sum(-1).mean()
  assert msd == pytest.approx(4 * D * (F - 1), rel=0.06)  # 2-D: <r^2> = 4 D t


def test_poiseuille_velocity_profile_is_parabolic():
  params = {"num_cells": 50, "cell_radius_px": 4.0, "vessel_radius_px": 20.0, "max_velocity_px_per_frame": 3.0}
  tracks = simulate_tracks("poiseuille", params, num_frames=9, size=64, seed=1).astype(np.float64)
  offset = tracks[0, :, 0] - 32.0
  assert np.abs(offset).max() <= 20.0 - 4.0  # cells stay inside the vessel
  np.testing.assert_allclose(np.diff(tracks[..., 0], axis=0), 0.0, atol=1e-6)  # no lateral motion
  velocity = np.diff(tracks[..., 1], axis=0)
  np.testing.assert_allclose(velocity, np.broadcast_to(3.0 * (1 - (offset / 20.0) ** 2), velocity.shape), rtol=1e-5)


def test_division_conserves_volume_and_separates_along_axis():
  r0, start, duration, angle = 10.0, 2, 5, 30.0
  params = {"cell_radius_px": r0, "division_start_frame": start, "cleavage_frames": duration, "axis_angle_deg": angle}
  tracks = simulate_tracks("division", params, num_frames=13, size=64, seed=0).astype(np.float64)
  assert tracks.shape == (13, 2, 2)
  np.testing.assert_allclose(tracks[: start + 1, 0], tracks[: start + 1, 1])  # one cell before cleavage
  separation = tracks[-1, 0] - tracks[-1, 1]
  daughter = r0 * 2 ** (-1 / 3)  # two daughters of equal volume: 2 r_d^3 = r0^3
  assert np.linalg.norm(separation) == pytest.approx(2 * daughter)  # touching
  direction = separation / np.linalg.norm(separation)
  np.testing.assert_allclose(np.abs(direction), np.abs([-np.sin(np.deg2rad(angle)), np.cos(np.deg2rad(angle))]))
  gaps = np.linalg.norm(tracks[:, 0] - tracks[:, 1], axis=-1)
  assert (np.diff(gaps) >= -1e-9).all()  # daughters only move apart
  assert f"{daughter:.1f} px" in caption("division", params, num_frames=13, size=64, fps=8)


def test_sedimentation_drift_diffusion_and_settling():
  v, D, F = 1.5, 0.3, 11
  params = {"num_particles": 4000, "radius_px": 2.0, "settling_velocity_px_per_frame": v, "diffusion_px2_per_frame": D}
  tracks = simulate_tracks("sedimentation", params, num_frames=F, size=BIG, seed=0).astype(np.float64)
  displacement = tracks[-1] - tracks[0]
  assert displacement[:, 0].mean() == pytest.approx(v * (F - 1), rel=0.02)  # +y is down
  assert abs(displacement[:, 1].mean()) < 0.1
  np.testing.assert_allclose(displacement.var(axis=0), 2 * D * (F - 1), rtol=0.08)
  small = dict(params, num_particles=20)
  settled = simulate_tracks("sedimentation", small, num_frames=80, size=32, seed=0)
  np.testing.assert_allclose(settled[-1, :, 0], 32 - 1 - 2.0, atol=1e-5)  # everyone rests on the bottom


def test_chemotaxis_moves_up_the_gradient_only_with_bias():
  base = {
    "num_bacteria": 3000,
    "run_speed_px_per_frame": 1.5,
    "tumble_probability_per_frame": 0.4,
    "source_y_px": 10.0,
    "source_x_px": 190.0,
    "length_px": 4.0,
  }

  def approach(bias: float) -> tuple[float, float]:
    tracks = simulate_tracks("chemotaxis", dict(base, chemotactic_bias=bias), num_frames=31, size=200, seed=0)
    distance = np.linalg.norm(tracks - np.array([10.0, 190.0]), axis=-1)
    change = distance[0] - distance[-1]
    return change.mean(), change.std() / np.sqrt(len(change))

  biased, biased_err = approach(0.9)
  unbiased, unbiased_err = approach(0.0)
  assert biased > 8 * biased_err and biased > 3.0
  assert abs(unbiased) < 4 * unbiased_err + 0.5
  steps = np.linalg.norm(
    np.diff(simulate_tracks("chemotaxis", dict(base, chemotactic_bias=0.5), num_frames=5, size=200, seed=1), axis=0),
    axis=-1,
  )
  assert np.median(steps) == pytest.approx(1.5, rel=1e-5)  # runs at constant speed


@pytest.mark.parametrize("process", PROCESSES)
def test_render_is_deterministic_and_draws_the_tracks(process):
  params = sample_params(process, np.random.default_rng(0), size=32, num_frames=9)
  frames = render_clip(process, params, num_frames=9, size=32, seed=5)
  assert frames.shape == (9, 32, 32, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, render_clip(process, params, num_frames=9, size=32, seed=5))
  assert not np.array_equal(frames, render_clip(process, params, num_frames=9, size=32, seed=6))
  assert frames.std() > 5  # not a blank field
  # Bodies sit where the tracks say: pixels at body centres differ from the frame's median.
  tracks = simulate_tracks(process, params, num_frames=9, size=32, seed=5)
  y, x = np.clip(np.round(tracks), 0, 31).astype(int)[..., 0], np.clip(np.round(tracks), 0, 31).astype(int)[..., 1]
  if process == "poiseuille":
    x = np.mod(x, 32)
  gray = frames.astype(float).mean(-1)
  at_bodies = gray[np.arange(9)[:, None], y % 32, x]
  assert np.abs(at_bodies - np.median(gray, axis=(1, 2))[:, None]).mean() > 10


@pytest.mark.parametrize("process", PROCESSES)
def test_caption_states_process_and_parameters(process):
  params = sample_params(process, np.random.default_rng(1), size=64, num_frames=17)
  text = caption(process, params, num_frames=17, size=64, fps=8)
  assert "64x64 px" in text and "17 frames at 8 fps" in text and "px" in text
  for key, value in params.items():
    if key.endswith("_px") or key.endswith("_frame"):
      assert f"{value:.2f}" in text or f"{value:.1f}" in text or f"{value:.0f}" in text, (key, text)


def test_dataset_splits_features_and_prompts(synth_data_dir, synth_settings, tmp_path):
  settings = synth_settings
  builder = tfds.builder_from_directory(f"{synth_data_dir}/microsim_synth/1.0.0")
  n = settings["num_clips"]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": n - 1, "validation": 1}
  prompts_path = tmp_path / "prompts.jsonl"
  assert export_prompts(prompts_path, **{k: settings[k] for k in ("num_clips", "seed", "num_frames", "size")}) == n
  prompts = {row["id"]: row for row in map(json.loads, prompts_path.read_text().splitlines())}
  seen_processes = set()
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      record = source[i]
      row = prompts[record["id"].decode()]
      assert row["split"] == split and row["caption"] == record["caption"].decode()
      assert row["params"] == json.loads(record["params"]) and row["process"] == record["process"].decode()
      seen_processes.add(row["process"])
      frames = video.decode_frames(record["video"], settings["num_frames"])
      assert frames.shape == (settings["num_frames"], settings["size"], settings["size"], 3)
      assert record["num_frames"] == settings["num_frames"] and record["height"] == settings["size"]
      expected = render_clip(
        row["process"], row["params"], num_frames=row["num_frames"], size=row["size"], seed=row["seed"]
      )
      # The stored mp4 is this render (compared on 4x4 block means: the pixel noise does not survive x264).
      blocks = lambda a: a.astype(float).mean(-1).reshape(a.shape[0], a.shape[1] // 4, 4, -1, 4).mean((2, 4))
      assert np.abs(blocks(frames) - blocks(expected)).mean() < 2.5
      np.testing.assert_allclose(
        record["tracks"],
        simulate_tracks(
          row["process"], row["params"], num_frames=row["num_frames"], size=row["size"], seed=row["seed"]
        ),
      )
  assert seen_processes == set(PROCESSES)
  assert clip_spec(0, seed=settings["seed"], num_frames=9, size=32, fps=8) == clip_spec(
    0, seed=settings["seed"], num_frames=9, size=32, fps=8
  )


def test_rebuild_with_other_settings_is_refused(synth_data_dir, synth_settings, tmp_path):
  settings = synth_settings
  with pytest.raises(ValueError, match="--overwrite"):
    build_dataset.build("microsim_synth", synth_data_dir, **dict(settings, seed=settings["seed"] + 1))
  # The same settings reuse the existing dataset.
  prompts = tmp_path / "prompts.jsonl"
  path = build_dataset.build("microsim_synth", synth_data_dir, export_prompts=str(prompts), **settings)
  assert (path / "dataset_info.json").exists()
  assert len(prompts.read_text().splitlines()) == settings["num_clips"]


def test_extra_train_clips_add_training_data_and_keep_the_validation_clips(tmp_path):
  common = dict(num_clips=10, num_frames=3, size=16)
  plain = build_dataset.build("microsim_synth", str(tmp_path / "plain"), **common)
  prompts = tmp_path / "prompts.jsonl"
  extra = build_dataset.build(
    "microsim_synth", str(tmp_path / "extra"), extra_train_clips=4, export_prompts=str(prompts), **common
  )

  def ids(path, split):
    source = tfds.builder_from_directory(str(path)).as_data_source(split=split)
    return sorted(source[i]["id"].decode() for i in range(len(source)))

  assert ids(extra, "validation") == ids(plain, "validation") == ["synth_000009"]
  assert ids(extra, "train") == ids(plain, "train") + [f"synth_{i:06d}" for i in range(10, 14)]
  rows = [json.loads(line) for line in prompts.read_text().splitlines()]
  assert [r["split"] for r in rows] == ["train"] * 9 + ["validation"] + ["train"] * 4
  assert [r["caption"] for r in rows[10:]] == [
    clip_spec(i, seed=0, num_frames=3, size=16, fps=8.0).caption for i in range(10, 14)
  ]
  with pytest.raises(ValueError, match="extra_train_clips.*--overwrite"):
    build_dataset.build("microsim_synth", str(tmp_path / "plain"), extra_train_clips=4, **common)
