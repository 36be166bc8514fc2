"""Procedural micro-world clips: simple, correct physics rendered like microscopy.

Units: lengths in pixels (px), time in frames (one frame = one time step dt = 1), so a diffusion
coefficient is in px^2/frame and a velocity in px/frame. Positions are (y, x) with y pointing down
(row index) and x to the right (column index); the field is `size` x `size` px.

Processes (`PROCESSES`) and their parameters (every key of `params`):

- "brownian": free 2-D Brownian motion, fluorescence. `num_particles`, `radius_px`,
  `diffusion_px2_per_frame` (D). Each step adds N(0, sqrt(2 D dt)) per axis; walls reflect.
- "poiseuille": red blood cells (biconcave discs, Evans-Fung thickness profile) carried left to
  right through a horizontal vessel, bright-field. `num_cells`, `cell_radius_px`,
  `vessel_radius_px` (R), `max_velocity_px_per_frame` (u_max). A cell at lateral offset y from the
  axis moves at u(y) = u_max (1 - (y/R)^2); x is periodic (cells leaving right re-enter left).
- "division": one cell dividing into two, phase contrast. `cell_radius_px` (r0),
  `division_start_frame`, `cleavage_frames`, `axis_angle_deg` (division axis, degrees
  counter-clockwise from +x). Daughters have radius r0 / 2^(1/3) (volume conserved) and their
  centres move apart along the axis until they touch.
- "sedimentation": particles settling under gravity (towards +y, the bottom) at the Stokes terminal
  velocity plus Brownian motion, bright-field. `num_particles`, `radius_px`,
  `settling_velocity_px_per_frame` (v_s), `diffusion_px2_per_frame` (D). Particles stop at the bottom.
- "chemotaxis": run-and-tumble bacteria biased towards a chemoattractant source, dark-field.
  `num_bacteria`, `run_speed_px_per_frame` (v), `tumble_probability_per_frame` (p0),
  `chemotactic_bias` (b in [0, 1)), `source_y_px`, `source_x_px`, `length_px`. Each frame a
  bacterium tumbles (new uniform heading) with probability p0 (1 - b cos(phi)), phi the angle
  between its heading and the direction to the source, then runs v px along its heading.

Ground-truth tracks are float32 (F, N, 2) body centres (y, x) in px; NaN never occurs. For
"poiseuille" x is unwrapped (the true displacement); for "division" the two bodies are the
daughters, both at the mother's centre before cleavage.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from microverse_jax import files

PROCESSES = ("brownian", "poiseuille", "division", "sedimentation", "chemotaxis")
DEFAULTS = {"num_clips": 320, "seed": 0, "num_frames": 17, "size": 64, "fps": 8.0}  # the dataset's


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one dataset clip shows: process, ground-truth params, caption and the render seed."""

  process: str
  params: dict
  caption: str
  seed: int


def _check_process(process: str) -> None:
  if process not in PROCESSES:
    raise ValueError(f"unknown process {process!r}; expected one of {PROCESSES}")


def sample_params(process: str, rng: np.random.Generator, *, size: int, num_frames: int) -> dict:
  """Draws physically sensible parameters for `process`, scaled to a `size` px field."""
  _check_process(process)
  s = size / 64.0
  u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 3)
  if process == "brownian":
    return {
      "num_particles": int(rng.integers(6, 17)),
      "radius_px": u(1.2 * s, 2.2 * s),
      "diffusion_px2_per_frame": u(0.1 * s * s, 1.5 * s * s),
    }
  if process == "poiseuille":
    return {
      "num_cells": int(rng.integers(4, 9)),
      "cell_radius_px": u(3.5 * s, 4.5 * s),
      "vessel_radius_px": u(0.28 * size, 0.4 * size),
      "max_velocity_px_per_frame": u(1.0 * s, 4.0 * s),
    }
  if process == "division":
    start = int(rng.integers(1, max(2, num_frames // 3)))
    cleavage = int(rng.integers(max(2, num_frames // 3), max(3, num_frames // 2) + 1))
    cleavage = max(1, min(cleavage, num_frames - 2 - start))
    return {
      "cell_radius_px": u(0.14 * size, 0.2 * size),
      "division_start_frame": start,
      "cleavage_frames": cleavage,
      "axis_angle_deg": u(0.0, 180.0),
    }
  if process == "sedimentation":
    return {
      "num_particles": int(rng.integers(8, 17)),
      "radius_px": u(1.5 * s, 2.5 * s),
      "settling_velocity_px_per_frame": u(0.5 * s, 2.5 * s),
      "diffusion_px2_per_frame": u(0.05 * s * s, 0.4 * s * s),
    }
  corner = rng.integers(0, 4)
  margin = 0.06 * size
  return {
    "num_bacteria": int(rng.integers(8, 15)),
    "run_speed_px_per_frame": u(1.0 * s, 2.5 * s),
    "tumble_probability_per_frame": u(0.2, 0.5),
    "chemotactic_bias": u(0.5, 0.9),
    "source_y_px": round(margin if corner < 2 else size - 1 - margin, 3),
    "source_x_px": round(margin if corner % 2 == 0 else size - 1 - margin, 3),
    "length_px": u(3.0 * s, 4.5 * s),
  }


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Reflects coordinates into [lo, hi] (mirror walls)."""
  span = hi - lo
  y = np.mod(x - lo, 2 * span)
  return lo + np.where(y > span, 2 * span - y, y)


def _simulate(
  process: str, params: dict, num_frames: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
  """Returns tracks float64 (F, N, 2) (y, x) px and per-frame render state (radii, headings)."""
  F, hi = num_frames, size - 1.0
  if process in ("brownian", "sedimentation"):
    n, r, D = params["num_particles"], params["radius_px"], params["diffusion_px2_per_frame"]
    v = params.get("settling_velocity_px_per_frame", 0.0)
    bottom = hi - r
    pos = np.empty((F, n, 2))
    pos[0, :, 1] = rng.uniform(r, hi - r, n)
    pos[0, :, 0] = rng.uniform(r, hi - r, n) if process == "brownian" else rng.uniform(r, 0.6 * size, n)
    step_std = np.sqrt(2.0 * D)  # per axis, dt = 1 frame
    for t in range(1, F):
      step = rng.normal(0.0, step_std, (n, 2)) + np.array([v, 0.0])
      nxt = pos[t - 1] + step
      if process == "brownian":
        pos[t] = _reflect(nxt, 0.0, hi)
      else:
        nxt[:, 1] = _reflect(nxt[:, 1], 0.0, hi)
        nxt[:, 0] = np.minimum(_reflect(np.minimum(nxt[:, 0], 2 * bottom), 0.0, hi), bottom)
        settled = pos[t - 1, :, 0] >= bottom
        nxt[settled, 0] = bottom
        pos[t] = nxt
    return pos, {"radius": np.full((F, n), r)}
  if process == "poiseuille":
    n, r = params["num_cells"], params["cell_radius_px"]
    R, umax = params["vessel_radius_px"], params["max_velocity_px_per_frame"]
    offset = rng.uniform(-(R - r), R - r, n)
    x0 = rng.uniform(0.0, size, n)
    speed = umax * (1.0 - (offset / R) ** 2)
    t = np.arange(F)[:, None]
    pos = np.stack([np.broadcast_to(size / 2 + offset, (F, n)), x0 + speed * t], axis=-1)
    return pos, {"radius": np.full((F, n), r)}
  if process == "division":
    r0, start = params["cell_radius_px"], params["division_start_frame"]
    duration, angle = params["cleavage_frames"], np.deg2rad(params["axis_angle_deg"])
    rd = r0 * 2.0 ** (-1.0 / 3.0)
    centre = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    p = np.clip((np.arange(F) - start) / duration, 0.0, 1.0)
    p = p * p * (3 - 2 * p)  # smooth constriction
    axis = np.array([-np.sin(angle), np.cos(angle)])  # (dy, dx); y points down
    d = (p * rd)[:, None, None] * np.array([1.0, -1.0])[None, :, None] * axis
    pos = centre + d
    radius = np.repeat((r0 + (rd - r0) * p)[:, None], 2, axis=1)
    return pos, {"radius": radius}
  n, v = params["num_bacteria"], params["run_speed_px_per_frame"]
  p0, b = params["tumble_probability_per_frame"], params["chemotactic_bias"]
  source = np.array([params["source_y_px"], params["source_x_px"]])
  pos = np.empty((F, n, 2))
  pos[0] = rng.uniform(0.1 * size, 0.9 * size, (n, 2))
  heading = rng.uniform(0, 2 * np.pi, n)
  headings = np.empty((F, n))
  headings[0] = heading
  for t in range(1, F):
    to_source = source - pos[t - 1]
    cos_phi = (np.cos(heading) * to_source[:, 1] + np.sin(heading) * to_source[:, 0]) / np.maximum(
      np.linalg.norm(to_source, axis=1), 1e-6
    )
    tumble = rng.random(n) < p0 * (1.0 - b * cos_phi)
    heading = np.where(tumble, rng.uniform(0, 2 * np.pi, n), heading)
    pos[t] = _reflect(pos[t - 1] + v * np.stack([np.sin(heading), np.cos(heading)], -1), 0.0, hi)
    headings[t] = heading
  return pos, {"heading": headings}


def simulate_tracks(process: str, params: dict, *, num_frames: int, size: int, seed: int) -> np.ndarray:
  """Ground-truth body centres float32 (F, N, 2) (y, x) px; the same ones `render_clip` draws."""
  _check_process(process)
  return _simulate(process, params, num_frames, size, np.random.default_rng(seed))[0].astype(np.float32)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur over axes 1 and 2 of (F, H, W, C), edges replicated."""
  radius = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  k /= k.sum()
  for axis in (1, 2):
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="edge")
    n = image.shape[axis]
    image = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
  return image


def _rho(centres: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
  """Normalised distance |p - c| / r of every pixel to every body: (F, N, H, W)."""
  grid = np.arange(size, dtype=np.float64)
  dy = grid[None, None, :, None] - centres[..., 0, None, None]
  dx = grid[None, None, None, :] - centres[..., 1, None, None]
  return np.sqrt(dy * dy + dx * dx) / radii[..., None, None]


def _soft_disc(rho: np.ndarray, radii: np.ndarray) -> np.ndarray:
  """1 inside, 0 outside, a one-pixel antialiased edge."""
  return np.clip((1.0 - rho) * radii[..., None, None] + 0.5, 0.0, 1.0)


def _biconcave_thickness(rho: np.ndarray) -> np.ndarray:
  """Evans-Fung red-cell thickness over the disc (rho = r / R), max ~1 at the rim, thin centre."""
  inside = np.clip(1.0 - rho * rho, 0.0, None)
  r2 = np.minimum(rho * rho, 1.0)
  return 2.0 * np.sqrt(inside) * (0.207 + 2.003 * r2 - 1.123 * r2 * r2) / 1.3


def _draw(process: str, params: dict, tracks: np.ndarray, state: dict, size: int) -> np.ndarray:
  """Renders float (F, H, W, 3) intensities in [0, 1] before optics blur and noise."""
  if process == "brownian":
    rho = _rho(tracks, state["radius"], size)
    glow = np.exp(-2.0 * rho * rho).sum(axis=1).clip(0, 1.5)
    return 0.04 + glow[..., None] * np.array([0.35, 0.95, 0.45])
  if process in ("poiseuille", "sedimentation"):
    background = np.array([0.92, 0.90, 0.84])
    if process == "poiseuille":
      centres = tracks.copy()
      r = params["cell_radius_px"]
      centres[..., 1] = np.mod(centres[..., 1] + r, size + 2 * r) - r
      rho = _rho(centres, state["radius"], size)
      absorbance = _biconcave_thickness(rho).sum(axis=1)[..., None] * np.array([0.25, 1.1, 1.0])
      y = np.arange(size)[:, None] - size / 2
      R = params["vessel_radius_px"]
      wall = np.exp(-0.5 * ((np.abs(y) - R) / 0.8) ** 2) * 0.8
      lumen = (np.abs(y) < R) * 0.05
      absorbance = absorbance + (wall + lumen)[None, :, :, None] * np.array([0.6, 0.7, 0.7])
    else:
      rho = _rho(tracks, state["radius"], size)
      body = _soft_disc(rho, state["radius"]).sum(axis=1)
      absorbance = body[..., None] * np.array([0.9, 0.8, 0.6])
    return background * np.exp(-absorbance)
  if process == "division":
    rho = _rho(tracks, state["radius"], size)
    body = _soft_disc(rho, state["radius"]).max(axis=1)
    halo = np.exp(-0.5 * ((rho - 1.08) / 0.06) ** 2).max(axis=1)
    nucleus = np.exp(-0.5 * (rho / 0.35) ** 2).max(axis=1)
    grey = 0.55 - 0.18 * body - 0.12 * nucleus * body + 0.3 * halo * (1 - body)
    return grey[..., None] * np.array([1.0, 1.0, 1.0])
  # chemotaxis: rods along the heading, dark-field.
  length, width = params["length_px"], 0.35 * params["length_px"]
  grid = np.arange(size, dtype=np.float64)
  dy = grid[None, None, :, None] - tracks[..., 0, None, None]
  dx = grid[None, None, None, :] - tracks[..., 1, None, None]
  c, s = np.cos(state["heading"])[..., None, None], np.sin(state["heading"])[..., None, None]
  along, across = dx * c + dy * s, -dx * s + dy * c
  rho = np.sqrt((along / (length / 2)) ** 2 + (across / (width / 2)) ** 2)
  rods = np.clip((1.0 - rho) * (width / 2) + 0.5, 0, 1).sum(axis=1).clip(0, 1)
  source = np.array([params["source_y_px"], params["source_x_px"]])
  d2 = ((grid[:, None] - source[0]) ** 2 + (grid[None, :] - source[1]) ** 2) / (0.25 * size) ** 2
  gradient = 0.06 * np.exp(-d2)
  return 0.03 + (rods * 0.85 + gradient[None])[..., None] * np.array([0.85, 0.9, 1.0])


def render_clip(process: str, params: dict, *, num_frames: int, size: int, seed: int) -> np.ndarray:
  """Renders one clip as uint8 (F, size, size, 3): optics blur (PSF sigma ~0.7 px at 64 px) and noise.

  Deterministic in (process, params, num_frames, size, seed); draws `simulate_tracks(...)`.
  """
  _check_process(process)
  rng = np.random.default_rng(seed)
  tracks, state = _simulate(process, params, num_frames, size, rng)
  chunk = 8  # frames drawn at once: bounds the (frames, bodies, H, W) distance fields
  image = np.concatenate(
    [
      _draw(process, params, tracks[i : i + chunk], {k: v[i : i + chunk] for k, v in state.items()}, size)
      for i in range(0, num_frames, chunk)
    ]
  )
  image = _gaussian_blur(image, sigma=0.7 * max(1.0, size / 64))
  noise_rng = np.random.default_rng([seed, 1])
  y = np.linspace(-1, 1, size)
  illumination = 1.0 + 0.08 * noise_rng.uniform(-1, 1) * y[:, None] + 0.08 * noise_rng.uniform(-1, 1) * y[None, :]
  image = image * illumination[None, :, :, None]
  image = image + noise_rng.normal(0.0, noise_rng.uniform(0.01, 0.03), image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


_MODALITY = {
  "brownian": "Fluorescence",
  "poiseuille": "Bright-field",
  "division": "Phase-contrast",
  "sedimentation": "Bright-field",
  "chemotaxis": "Dark-field",
}


def _where(y: float, x: float, size: int) -> str:
  vertical = "top" if y < size / 3 else "bottom" if y > 2 * size / 3 else "middle"
  horizontal = "left" if x < size / 3 else "right" if x > 2 * size / 3 else "centre"
  return f"{vertical}-{horizontal}"


def caption(process: str, params: dict, *, num_frames: int, size: int, fps: float) -> str:
  """A caption stating the process and every parameter with its units (px, frames)."""
  _check_process(process)
  p = params
  if process == "brownian":
    body = (
      f"{p['num_particles']} fluorescent beads of radius {p['radius_px']:.1f} px undergo free "
      f"Brownian motion with diffusion coefficient D = {p['diffusion_px2_per_frame']:.2f} px^2/frame "
      f"(each frame a displacement of standard deviation sqrt(2D) per axis, no drift), "
      f"reflecting off the edges of the field"
    )
  elif process == "poiseuille":
    body = (
      f"{p['num_cells']} red blood cells, biconcave discs of radius {p['cell_radius_px']:.1f} px, "
      f"are carried from left to right through a horizontal blood vessel of radius "
      f"{p['vessel_radius_px']:.1f} px by laminar Poiseuille flow: a parabolic velocity profile "
      f"with {p['max_velocity_px_per_frame']:.2f} px/frame on the vessel axis falling to zero at the walls, "
      f"so cells near the centre overtake cells near the walls"
    )
  elif process == "division":
    body = (
      f"a single round cell of radius {p['cell_radius_px']:.1f} px divides into two daughter cells: "
      f"cleavage starts at frame {p['division_start_frame']} and takes {p['cleavage_frames']} frames, "
      f"the daughters (radius {p['cell_radius_px'] * 2 ** (-1 / 3):.1f} px, volume conserved) separating "
      f"along an axis at {p['axis_angle_deg']:.0f} degrees from horizontal until they touch"
    )
  elif process == "sedimentation":
    body = (
      f"{p['num_particles']} particles of radius {p['radius_px']:.1f} px sediment under gravity towards "
      f"the bottom of the field at the Stokes terminal velocity {p['settling_velocity_px_per_frame']:.2f} "
      f"px/frame while diffusing with D = {p['diffusion_px2_per_frame']:.2f} px^2/frame, "
      f"and come to rest on the bottom"
    )
  else:
    where = _where(p["source_y_px"], p["source_x_px"], size)
    body = (
      f"{p['num_bacteria']} rod-shaped bacteria {p['length_px']:.1f} px long swim by run-and-tumble "
      f"chemotaxis towards a chemoattractant source at the {where} corner "
      f"(x = {p['source_x_px']:.0f} px, y = {p['source_y_px']:.0f} px): runs at "
      f"{p['run_speed_px_per_frame']:.2f} px/frame, tumbling with probability "
      f"{p['tumble_probability_per_frame']:.2f} per frame, reduced by a chemotactic bias of "
      f"{p['chemotactic_bias']:.2f} when heading up the gradient"
    )
  return f"{_MODALITY[process]} microscopy, {size}x{size} px field, {num_frames} frames at {fps:g} fps: {body}."


def clip_spec(index: int, *, seed: int, num_frames: int, size: int, fps: float) -> ClipSpec:
  """Spec of clip `index` of the dataset with base `seed` (cheap: nothing is rendered).

  The process cycles through PROCESSES, so every process gets the same share of clips.
  """
  process = PROCESSES[index % len(PROCESSES)]
  clip_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
  params = sample_params(process, np.random.default_rng([clip_seed, 7]), size=size, num_frames=num_frames)
  return ClipSpec(
    process=process,
    params=params,
    seed=clip_seed,
    caption=caption(process, params, num_frames=num_frames, size=size, fps=fps),
  )


def split_of(index: int, num_clips: int) -> str:
  """'validation' for the last max(1, num_clips // 10) of clips 0 .. num_clips - 1, 'train' for the rest (and
  for the extra training clips from num_clips on)."""
  return "validation" if num_clips - max(1, num_clips // 10) <= index < num_clips else "train"


def export_prompts(
  path: str | os.PathLike,
  *,
  num_clips: int = DEFAULTS["num_clips"],
  seed: int = DEFAULTS["seed"],
  num_frames: int = DEFAULTS["num_frames"],
  size: int = DEFAULTS["size"],
  fps: float = DEFAULTS["fps"],
  extra_train_clips: int = 0,
) -> int:
  """Writes the dataset's prompts as JSONL without rendering; returns the number of rows.

  Each row: {"id", "split", "process", "params" (units px, frames), "caption", "seed" (render seed),
  "num_frames", "size", "fps"}: enough to re-render a clip with `render_clip` and compare physics.
  """
  # the ids become mp4 names in sample
  ids = files.check_ids([f"synth_{i:06d}" for i in range(num_clips + extra_train_clips)])
  rows = []
  for i, clip_id in enumerate(ids):
    spec = clip_spec(i, seed=seed, num_frames=num_frames, size=size, fps=fps)
    rows.append(
      json.dumps(
        {
          "id": clip_id,
          "split": split_of(i, num_clips),
          "process": spec.process,
          "params": spec.params,
          "caption": spec.caption,
          "seed": spec.seed,
          "num_frames": num_frames,
          "size": size,
          "fps": fps,
        }
      )
    )
  files.write_text(path, "\n".join(rows) + "\n")  # atomic, replaces an earlier export
  return len(rows)
