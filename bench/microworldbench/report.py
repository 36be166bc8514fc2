"""Markdown report and PNG plots (per-category and per-dimension scores across models, with CIs).

Plots need matplotlib (`pip install microworldbench[plots]`); it is imported only here, when asked.
"""

from __future__ import annotations

import os
from typing import Any

from microworldbench.files import atomic_path, write_atomic
from microworldbench.rubrics import CATEGORIES, DIMENSIONS, RubricSet

PLOT_GROUPS = (("categories", CATEGORIES, "category"), ("dimensions", DIMENSIONS, "dimension"))


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
  if value is None:
    return "–"
  if ci is None:
    return f"{value:.1f}"
  return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def _ranked(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  return sorted(summary["models"].items(), key=lambda kv: -(kv[1]["overall"] or 0.0))


def markdown_tables(summary: dict[str, Any]) -> str:
  """Coverage (with each file's judge and protocol), Table 1 (overall and categories) and Table 2
  (overall and dimensions), with 95% CIs."""
  ranked = _ranked(summary)
  lines = [
    f"Mode: `{summary['mode']}`. Scores in %, bootstrap 95% CI over tasks in brackets.",
    "",
    "| Model | Valid tasks | Incomplete | Missing | Judge | Protocol |",
    "|---|---|---|---|---|---|",
  ]
  for name, m in ranked:
    counts = f"{m['valid_tasks']} | {len(m['incomplete_tasks'])} | {len(m['missing_tasks'])}"
    judged = " | ".join(m.get(k) or "not recorded" for k in ("judge_model", "protocol"))
    lines.append(f"| {name} | {counts} | {judged} |")
  for title, key, groups in (
    ("Overall and categories", "categories", CATEGORIES),
    ("Overall and dimensions", "dimensions", DIMENSIONS),
  ):
    lines += [
      "",
      f"**{title}**",
      "",
      "| Model | Overall | " + " | ".join(g.capitalize() for g in groups) + " |",
      "|---" * (len(groups) + 2) + "|",
    ]
    for name, m in ranked:
      cells = [_fmt(m[key][g], m["ci95"][key][g]) for g in groups]
      lines.append(f"| {name} | {_fmt(m['overall'], m['ci95']['overall'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_markdown(summary: dict[str, Any], path: str, plots: list[str], rubrics: RubricSet | None = None) -> None:
  """Writes the Markdown report (tables, incomplete tasks, rubric anomalies, plot links)."""
  parts = ["# MicroWorldBench report", "", markdown_tables(summary)]
  for p in plots:
    parts += ["", f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(path)))})"]
  for name, m in _ranked(summary):
    if m["incomplete_tasks"]:
      parts += ["", f"**{name}: incomplete or dropped tasks**", ""]
      parts += [f"- task {i}: {why}" for i, why in m["incomplete_tasks"].items()]
  if rubrics is not None and rubrics.anomalies:
    parts += ["", "**Rubric anomalies**", "", "```", rubrics.summary(), "```"]
  write_atomic(path, "\n".join(parts) + "\n")


def write_plots(summary: dict[str, Any], out_dir: str) -> list[str]:
  """Grouped bar charts with 95% CI error bars: `categories.png`, `dimensions.png`."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise ValueError("--plots needs matplotlib: pip install 'microworldbench[plots]'") from None
  import numpy as np

  os.makedirs(out_dir, exist_ok=True)
  ranked = _ranked(summary)
  paths = []
  for key, groups, label in PLOT_GROUPS:
    fig, ax = plt.subplots(figsize=(2.0 + (1.0 + 0.5 * len(ranked)) * len(groups), 4.0))
    width = 0.8 / max(1, len(ranked))
    x = np.arange(len(groups))
    for i, (name, m) in enumerate(ranked):
      values = np.array([m[key][g] if m[key][g] is not None else np.nan for g in groups])
      cis = [m["ci95"][key][g] for g in groups]
      err = np.array([[v - c[0], c[1] - v] if c else [0.0, 0.0] for v, c in zip(values, cis)]).T
      ax.bar(x + (i - (len(ranked) - 1) / 2) * width, values, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, [g.capitalize() for g in groups])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"MicroWorldBench by {label} ({summary['mode']}), 95% CI")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{key}.png")
    with atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    paths.append(path)
  return paths
