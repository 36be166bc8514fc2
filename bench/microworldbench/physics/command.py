"""The `microworldbench physics` subcommand: score a folder of videos against a prompts JSONL.

  microworldbench physics --videos DIR --prompts PROMPTS.jsonl --out PHYS.json [--report DIR]

Each prompt row (as `python -m microverse_jax.build_dataset microsim_synth --export_prompts=PATH`
writes them) names its video `<id>.mp4` in DIR. Missing or unreadable videos fail with a reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from microworldbench.files import check_ids, read_bounded, write_json_atomic
from microworldbench.physics import metrics, summarize
from microworldbench.progress import Progress, add_progress_flags

MAX_PROMPTS_BYTES = 64 << 20  # Cap on a prompts JSONL (a row is a few hundred bytes).


def read_prompts(path: str) -> list[dict]:
  """Rows of a prompts JSONL (a regular file of at most MAX_PROMPTS_BYTES; blank lines skipped);
  ValueError naming the file and line at fault.

  Each row's `id` names its video `<id>.mp4`: ids must be safe file names ([A-Za-z0-9_.-]+, no
  leading dot) and unique; every offending row is named at once, before anything is scored.
  """
  try:
    text = read_bounded(path, "--prompts", MAX_PROMPTS_BYTES).decode("utf-8")
  except OSError as e:
    raise ValueError(f"--prompts {path}: cannot read ({e.strerror})") from None
  rows, ids = [], []
  for number, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not JSON ({e})") from None
    metrics.validate_row(row, where=f"{path}:{number}")
    if "id" not in row:
      raise ValueError(f"{path}:{number}: missing key 'id' (the video is <id>.mp4)")
    rows.append(row)
    ids.append((f"{path}:{number}", row["id"]))
  if not rows:
    raise ValueError(f"--prompts {path}: no rows")
  check_ids(ids, "id")
  return rows


def read_video(path: str) -> np.ndarray:
  """Every frame of a video: uint8 (F, H, W, 3) RGB."""
  import av  # Imported here so that `import microworldbench` stays light.

  with av.open(path) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  if not frames:
    raise ValueError(f"{path}: no frames")
  return np.stack(frames)


def score_video_file(videos_dir: str, row: dict) -> dict:
  """The result of one row's video (see `metrics.score_video`); missing or unreadable: failed with a reason."""
  path = os.path.join(videos_dir, f"{row['id']}.mp4")
  failed = {"id": row["id"], "process": row["process"], "pass": False, "metrics": {}, "checks": {}, "curves": {}}
  if not os.path.exists(path):
    return {**failed, "reason": f"missing video {path}"}
  try:
    video = read_video(path)
  except Exception as e:  # noqa: BLE001 - any decoder failure is this video's failure
    return {**failed, "reason": f"unreadable video {path}: {type(e).__name__}: {e}"}
  return metrics.score_video(video, row)


def score_directory(videos_dir: str, rows: list[dict], progress: bool | None = None) -> list[dict]:
  """Per-video results, in row order. Progress (done/total, rate, ETA) goes to stderr: a bar on
  a terminal, periodic lines elsewhere (`progress`: None picks, False hides)."""
  bar = Progress(len(rows), desc="physics ", enabled=progress, unit="video")
  results = []
  for row in rows:
    results.append(score_video_file(videos_dir, row))
    bar.update("pass" if results[-1]["pass"] else "fail")
  bar.close()
  return results


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def run(args: argparse.Namespace) -> int:
  if not os.path.isdir(args.videos):
    raise ValueError(f"--videos {args.videos}: not a directory")
  rows = read_prompts(args.prompts)
  results = score_directory(args.videos, rows, args.progress)
  summary = summarize(results)
  out = {"summary": summary, "rules": metrics.RULES, "videos": results}
  write_json_atomic(args.out, _json_safe(out))
  if args.report:
    from microworldbench.physics import report

    report.write_report(results, summary, args.report)
  passed = sum(r["pass"] for r in results)
  print(f"physics: {passed}/{len(results)} videos pass; wrote {args.out}")
  for name in sorted(k for k in summary if k.endswith("pass_rate")):
    print(f"  {name}: {summary[name]:.3f}")
  return 0


def register_cli(subparsers) -> None:
  parser = subparsers.add_parser(
    "physics",
    help="physics-fidelity metrics of procedural-process videos against their prompts",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--videos", required=True, help="folder of <id>.mp4 videos")
  parser.add_argument("--prompts", required=True, help="prompts JSONL: id, process, params, size per row")
  parser.add_argument("--out", required=True, help="output JSON: summary, rules and per-video results")
  parser.add_argument("--report", default=None, help="folder for plots and report.md (needs matplotlib)")
  add_progress_flags(parser)
  parser.set_defaults(func=run)
