"""The main job's picture: for each of the run's sample prompts, the ground truth above the sample.

Reads a workdir trained on the procedural dataset: its config's `eval.prompts` (full captions of
dataset clips) and the last `samples/step_N/<i>.mp4`. Ground truth is rendered from the matching
clip spec and reduced to the model's frames and size as the input pipeline does.

  python bench/perf/main_job_figure.py --workdir=workdir/tiny --out=bench/perf/figures/main_job.png
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
from PIL import Image

from microverse_jax import files, pipeline, saved_config, video
from microverse_jax.datasets.microsim_synth import DEFAULTS, clip_spec
from microverse_jax.datasets.microsim_synth.render import stored_clip


def ground_truth(caption: str, num_frames: int, size: int) -> np.ndarray:
  """uint8 (F, H, W, 3): the validation or train clip of the default dataset with this caption."""
  d = DEFAULTS
  for i in range(d["num_clips"]):
    spec = clip_spec(i, seed=d["seed"], num_frames=d["num_frames"], size=d["size"], fps=d["fps"])
    if spec.caption == caption:
      settings = {k: d[k] for k in ("num_frames", "size", "fps")}
      return stored_clip(spec.process, spec.params, seed=spec.seed, **settings, out=(num_frames, size, size))
  raise ValueError(f"no clip of the default microsim_synth dataset has the caption {caption[:80]!r}")


def figure(workdir: str, scale: int = 3) -> np.ndarray:
  """uint8 image: per prompt, a ground-truth strip over the sample strip (up to 8 frames each)."""
  c = saved_config.get_config(workdir)
  sample_dirs = sorted(
    (d for d in os.listdir(os.path.join(workdir, "samples")) if d.startswith("step_")), key=lambda d: int(d[5:])
  )
  if not sample_dirs:
    raise FileNotFoundError(f"{workdir}/samples holds no step_N folder: train with eval.sample_every > 0")
  rows = []
  for i, caption in enumerate(c.eval.prompts):
    with open(os.path.join(workdir, "samples", sample_dirs[-1], f"{i}.mp4"), "rb") as f:
      sample = video.decode_frames(f.read(), c.data.num_frames)
    truth = ground_truth(caption, c.data.num_frames, c.data.height)
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
