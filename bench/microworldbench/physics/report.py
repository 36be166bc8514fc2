"""Physics report: one PNG per process (generated measurements against the prompt's ground truth)
and report.md with the pass rates. Needs matplotlib (`pip install microworldbench[plots]`)."""

from __future__ import annotations

import math
import os

import numpy as np

from microworldbench.files import atomic_path, write_atomic

_PANELS_MAX = 6  # videos per process figure


def _plot_brownian(ax, r: dict) -> None:
  c = r["curves"]
  ax.plot(c["lags"], c["msd"], "o-", label="generated")
  ax.plot(c["lags"], c["msd_true"], "k--", label="4 D lag (prompt)")
  ax.set(xlabel="lag (frames)", ylabel="MSD (px^2)")


def _plot_poiseuille(ax, r: dict) -> None:
  c = r["curves"]
  big_r, umax = c["vessel_radius"], c["u_max"]
  y = np.linspace(-big_r, big_r, 50)
  ax.plot(c["offset"], c["speed"], "o", label="generated cells")
  ax.plot(y, umax * (1 - (y / big_r) ** 2), "k--", label="Poiseuille (prompt)")
  if c["centre_speed"] is not None and math.isfinite(c["centre_speed"]):
    ax.plot(y, c["centre_speed"] * (1 - (y / big_r) ** 2), "C1-", label="Poiseuille fit")
  ax.set(xlabel="offset from axis (px)", ylabel="speed (px/frame)")


def _plot_division(ax, r: dict) -> None:
  c = r["curves"]
  ax.step(range(len(c["counts"])), c["counts"], where="mid", label="generated count")
  ax.step(range(len(c["expected_counts"])), c["expected_counts"], "k--", where="mid", label="prompt")
  ax.set(xlabel="frame", ylabel="cells", ylim=(-0.2, max(3.2, max(c["counts"], default=0) + 0.2)))
  twin = ax.twinx()
  twin.plot(np.array(c["areas"]) / c["area_true"], "C2:", label="area / mother's")
  twin.set_ylabel("total area / mother's area")


def _plot_sedimentation(ax, r: dict) -> None:
  c = r["curves"]
  t = np.array(c["frames"], dtype=float)
  y = np.array(c["mean_y"], dtype=float)
  ax.plot(t, y, "o-", label="generated mean depth")
  if np.isfinite(y).any():
    y0 = y[np.isfinite(y)][0]
    ax.plot(t, np.minimum(y0 + c["v_true"] * (t - t[np.isfinite(y)][0]), c["floor"]), "k--", label="v_s t (prompt)")
  ax.set(xlabel="frame", ylabel="mean y (px, down)")


def _plot_chemotaxis(ax, r: dict) -> None:
  c = r["curves"]
  ax.plot(c["frames"], c["distance_to_source"], "o-", label="generated")
  ax.set(xlabel="frame", ylabel="mean distance to source (px)")


_PLOTS = {
  "brownian": _plot_brownian,
  "poiseuille": _plot_poiseuille,
  "division": _plot_division,
  "sedimentation": _plot_sedimentation,
  "chemotaxis": _plot_chemotaxis,
}


def write_report(results: list[dict], summary: dict[str, float], out_dir: str) -> list[str]:
  """Writes <process>.png (up to 6 videos each) and report.md into out_dir; returns the PNG paths."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise ValueError("--report needs matplotlib: pip install 'microworldbench[plots]'") from None
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for process, plot in _PLOTS.items():
    shown = [r for r in results if r["process"] == process and r["curves"]][:_PANELS_MAX]
    if not shown:
      continue
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
    for ax, r in zip(axes[0], shown):
      plot(ax, r)
      ax.set_title(f"{r['id']}: {'pass' if r['pass'] else 'FAIL'}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{process}.png")
    with atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    paths.append(path)
  lines = ["# Physics-fidelity report", "", "| score | value |", "|---|---|"]
  lines += [f"| {k} | {v:.3f} |" for k, v in summary.items() if k.endswith("pass_rate")]
  lines += ["", "| video | process | pass | reason |", "|---|---|---|---|"]
  lines += [f"| {r['id']} | {r['process']} | {r['pass']} | {r.get('reason') or ''} |" for r in results]
  lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]
  write_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")
  return paths
