"""The main job's picture: for each of the run's sample prompts, the ground truth above the sample.

Reads a workdir trained on the procedural dataset: its config's `evals.samples.prompts` (full captions of
dataset clips) and the last `samples/step_N/<i>.mp4`. Ground truth is the stored clip of the record
with that caption in the run's `data.data_dir`, reduced to the model's frames and size as the input
pipeline does.

  python bench/perf/main_job_figure.py --workdir=workdir/tiny --out=bench/perf/figures/main_job.png
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
from PIL import Image

from microverse_jax import files, pipeline, saved_config, video
from microverse_jax.datasets.microsim_synth.render import stored_rows


def ground_truth(data_dir: str, caption: str, num_frames: int, size: int) -> np.ndarray:
  """uint8 (F, H, W, 3): the stored clip of the validation or train record of the procedural dataset in
  DATA_DIR with this caption, decoded as the input pipeline reads it (first frames, resized)."""
  for split in ("validation", "train"):
    for row in stored_rows(data_dir, split):
      if row["caption"] == caption:
        return video.decode_frames(row["video"], num_frames, height=size, width=size)
  raise ValueError(f"no clip of the microsim_synth dataset in {data_dir} has the caption {caption[:80]!r}")


def figure(workdir: str, scale: int = 3) -> np.ndarray:
  """uint8 image: per prompt, a ground-truth strip over the sample strip (up to 8 frames each)."""
  c = saved_config.get_config(workdir)
  sample_dirs = sorted(
    (d for d in os.listdir(os.path.join(workdir, "samples")) if d.startswith("step_")), key=lambda d: int(d[5:])
  )
  if not sample_dirs:
    raise FileNotFoundError(f"{workdir}/samples holds no step_N folder: train with evals.samples.every > 0")
  rows = []
  for i, caption in enumerate(c.evals.samples.prompts):
    with open(os.path.join(workdir, "samples", sample_dirs[-1], f"{i}.mp4"), "rb") as f:
      sample = video.decode_frames(f.read(), c.data.num_frames)
    truth = ground_truth(c.data.data_dir, caption, c.data.num_frames, c.data.height)
    top, bottom = pipeline.filmstrip(truth), pipeline.filmstrip(sample)
    rows += [top, bottom, np.full((2, top.shape[1], 3), 255, np.uint8)]
  image = np.concatenate(rows[:-1])
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="PNG path")
  args = parser.parse_args(argv)
  buffer = io.BytesIO()
  Image.fromarray(figure(args.workdir)).save(buffer, format="PNG")
  files.write_bytes(args.out, buffer.getvalue())
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
