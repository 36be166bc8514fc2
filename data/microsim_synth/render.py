"""Renders the ground-truth clip of each row of an exported prompts file as <id>.mp4, e.g. to score
the ground truth with `microworldbench physics` next to a model's samples:

  python -m microverse_jax.build_dataset microsim_synth --export_prompts=prompts.jsonl
  python -m microverse_jax.datasets.microsim_synth.render --prompts=prompts.jsonl --out=gt64
  python -m microverse_jax.datasets.microsim_synth.render --prompts=prompts.jsonl --out=gt32 \\
      --num_frames=9 --size=32     # what the tiny model trains on: first 9 frames at 32x32
  microworldbench physics --videos=gt64 --prompts=prompts.jsonl --out=gt64.json
"""

from __future__ import annotations

import argparse
import json
import os

from microverse_jax import files, video
from microverse_jax.datasets.microsim_synth import processes


def stored_clip(
  process: str, params: dict, *, seed: int, num_frames: int, size: int, fps: float, out=(None, None, None)
):
  """uint8 (F, H, W, 3): the clip as the dataset stores it (mp4, crf 15), decoded as the input pipeline
  reads it: `out` = (frames, height, width) to keep (the first frames, resized); None keeps the stored."""
  clip = processes.render_clip(process, params, num_frames=num_frames, size=size, seed=seed)
  frames, height, width = out
  return video.decode_frames(video.encode_mp4(clip, fps, crf=15), frames or num_frames, height=height, width=width)


def stored_rows(data_dir: str, split: str) -> list[dict]:
  """The `split` records of the microsim_synth dataset in DATA_DIR as prompt rows (id, caption, process,
  params, size, num_frames, fps, and the stored mp4 bytes as video), sorted by id. The split is stored
  shuffled: pair a record with its clip by its id, never by its position."""
  from microverse_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  source = input_pipeline.load_source("microsim_synth", split, os.path.expanduser(data_dir))
  rows = [_row(source[i]) for i in range(len(source))]
  return sorted(rows, key=lambda row: row["id"])


def _row(record: dict) -> dict:
  return {
    **{k: record[k].decode() for k in ("id", "caption", "process")},
    "params": json.loads(record["params"]),
    "size": int(record["height"]),
    "num_frames": int(record["num_frames"]),
    "fps": float(record["fps"]),
    "video": record["video"],
  }


def render(
  prompts: str, out: str, *, num_frames: int | None = None, size: int | None = None, split: str | None = None
) -> int:
  """Writes <out>/<id>.mp4 for each row (of `split`); `num_frames`/`size` resample as the input
  pipeline does (first frames, resized). Returns the number of videos written."""
  with open(prompts, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if split is None or r.get("split") == split]
  files.check_ids([r["id"] for r in rows], what=f"prompt id in {prompts}")
  for r in rows:
    clip = processes.render_clip(r["process"], r["params"], num_frames=r["num_frames"], size=r["size"], seed=r["seed"])
    data = video.encode_mp4(clip, r["fps"], crf=15)
    if num_frames or size:
      frames = video.decode_frames(data, num_frames or r["num_frames"], height=size, width=size)
      data = video.encode_mp4(frames, r["fps"], crf=15)
    files.write_bytes(os.path.join(out, f"{r['id']}.mp4"), data)
  return len(rows)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    prog="python -m microverse_jax.datasets.microsim_synth.render",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--prompts", required=True, help="prompts JSONL (build_dataset microsim_synth --export_prompts)")
  p.add_argument("--out", required=True, help="output folder for <id>.mp4")
  p.add_argument("--num_frames", type=int, default=None, help="keep the first N frames (default: all)")
  p.add_argument("--size", type=int, default=None, help="resize to SIZE x SIZE (default: as rendered)")
  p.add_argument("--split", default=None, help="only rows of this split (default: all)")
  args = p.parse_args(argv)
  try:
    n = render(args.prompts, args.out, num_frames=args.num_frames, size=args.size, split=args.split)
  except (ValueError, OSError, KeyError) as e:
    p.exit(2, f"error: {e}\n")
  print(f"wrote {n} videos to {args.out}", flush=True)


if __name__ == "__main__":
  main()
