"""Raw-video pipeline throughput: clips/s per worker at the tiny config and at 480x832x81.

  python bench/perf/data_pipeline.py [--data_dir=DIR] [--clips=40] [--workers=0,2] [--full_clips=6]

tiny: the microsim_tiny config's data settings (frames, size) over the default microsim_synth
dataset (built into a temporary directory unless --data_dir holds it).
480x832x81: the recipe's shape, from synthetic 720x1280 H.264 clips of 81 frames (so each clip
is decoded and downscaled to cover 480x832, then centre-cropped), held in memory.
A "worker" is one decode process: worker_count=0 decodes in the main process with one reader
thread; worker_count=k uses k spawned processes. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, input_pipeline, video

TINY_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "microsim_tiny.py"


def tiny_data_config():
  spec = importlib.util.spec_from_file_location("microsim_tiny", TINY_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().data


def synthetic_clips(num_clips: int, *, num_frames: int = 81, height: int = 720, width: int = 1280) -> list[dict]:
  """Records shaped like microsim10k's: smooth moving texture (compressible like microscopy)."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  records = []
  for i in range(num_clips):
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for f in range(num_frames):
      value = 0.5 + 0.3 * np.sin((xx + (3 + i) * f) / 37.0) * np.cos((yy - 2 * f) / (29.0 + i))
      frames[f] = (np.clip(value, 0, 1) * 255).astype(np.uint8)[..., None]
    records.append(
      {
        "id": f"clip{i}",
        "caption": "A synthetic benchmark clip. " * 20,
        "video": video.encode_mp4(frames, fps=15, crf=23),
        "num_frames": num_frames,
        "fps": 15.0,
        "height": height,
        "width": width,
      }
    )
  return records


def measure(source, *, num_frames: int, height: int, width: int, workers: int, clips: int) -> dict:
  it = input_pipeline.make_video_iterator(
    source,
    batch_size=1,
    num_frames=num_frames,
    height=height,
    width=width,
    tokenizer=input_pipeline.ByteTokenizer(512),
    seed=0,
    worker_count=workers,
    read_threads=1,
    shard_index=0,
    shard_count=1,
  )
  for _ in range(max(2, workers * 2)):  # warm-up: worker start-up and first reads
    next(it)
  start = time.perf_counter()
  for _ in range(clips):
    next(it)
  rate = clips / (time.perf_counter() - start)
  return {
    "frames": num_frames,
    "height": height,
    "width": width,
    "workers": workers,
    "clips_per_s": round(rate, 3),
    "clips_per_s_per_worker": round(rate / max(1, workers), 3),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", help="where microsim_synth (default settings) is or will be built")
  parser.add_argument("--clips", type=int, default=40, help="clips timed per tiny measurement")
  parser.add_argument("--full_clips", type=int, default=6, help="clips timed per 480x832x81 measurement")
  parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  args = parser.parse_args()
  workers = [int(w) for w in args.workers.split(",")]
  tfds.disable_progress_bar()
  data = tiny_data_config()
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    build_dataset.build("microsim_synth", data_dir)
    source = input_pipeline.load_source("microsim_synth", "train", data_dir)
    for w in workers:
      print(
        json.dumps(
          {
            "config": "tiny",
            **measure(
              source, num_frames=data.num_frames, height=data.height, width=data.width, workers=w, clips=args.clips
            ),
          }
        ),
        flush=True,
      )
  records = synthetic_clips(3)
  for w in workers:
    print(
      json.dumps(
        {
          "config": "480x832x81",
          "source": "720x1280 h264",
          **measure(records, num_frames=81, height=480, width=832, workers=w, clips=args.full_clips),
        }
      ),
      flush=True,
    )


if __name__ == "__main__":
  main()
