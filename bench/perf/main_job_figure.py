"""The main job's picture: for each of the run's sample prompts, the ground truth above the sample.

Reads a workdir trained on the procedural dataset: its config's `evals.samples.prompts` (full captions of
dataset clips) and the last `samples/step_N/<i>.mp4`. Ground truth is the stored clip of the record
with that caption in the run's `data.data_dir`, reduced to the model's frames and size as the input
pipeline does. With --guidance, the prompts are sampled afresh from the run's latest weights instead,
one strip per guidance scale under the ground truth (the same noise for each).

  python bench/perf/main_job_figure.py --workdir=workdir/tiny --out=bench/perf/figures/main_job.png
  python bench/perf/main_job_figure.py --workdir=workdir/tiny --out=guidance.png --guidance=1,5
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


def stored_samples(workdir: str, c) -> list[list[np.ndarray]]:
  """Per sample prompt, [its video of the run's last samples/step_N]."""
  sample_dirs = sorted(
    (d for d in os.listdir(os.path.join(workdir, "samples")) if d.startswith("step_")), key=lambda d: int(d[5:])
  )
  if not sample_dirs:
    raise FileNotFoundError(f"{workdir}/samples holds no step_N folder: train with evals.samples.every > 0")
  videos = []
  for i in range(len(c.evals.samples.prompts)):
    with open(os.path.join(workdir, "samples", sample_dirs[-1], f"{i}.mp4"), "rb") as f:
      videos.append([video.decode_frames(f.read(), c.data.num_frames)])
  return videos


def fresh_samples(workdir: str, c, guidance: list[float]) -> list[list[np.ndarray]]:
  """Per sample prompt, its videos at each guidance scale, from the run's latest (EMA) weights, same noise."""
  pipe = pipeline.Pipeline.from_workdir(workdir)
  per_scale = [pipe(list(c.evals.samples.prompts), guidance=g, progress=False) for g in guidance]
  return [list(videos) for videos in zip(*per_scale)]


def figure(workdir: str, scale: int = 3, guidance: list[float] | None = None) -> np.ndarray:
  """uint8 image: per prompt, a ground-truth strip over its sample strips (one, or one per guidance scale;
  up to 8 frames each)."""
  c = saved_config.get_config(workdir)
  samples = fresh_samples(workdir, c, guidance) if guidance else stored_samples(workdir, c)
  rows = []
  for caption, videos in zip(c.evals.samples.prompts, samples):
    truth = ground_truth(c.data.data_dir, caption, c.data.num_frames, c.data.height)
    rows += [pipeline.filmstrip(v) for v in (truth, *videos)]
    rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
  image = np.concatenate(rows[:-1])
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="PNG path")
  parser.add_argument("--guidance", default="", help="e.g. 1,5: sample afresh at each scale")
  args = parser.parse_args(argv)
  guidance = [float(g) for g in args.guidance.split(",") if g.strip()]
  buffer = io.BytesIO()
  Image.fromarray(figure(args.workdir, guidance=guidance)).save(buffer, format="PNG")
  files.write_bytes(args.out, buffer.getvalue())
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
