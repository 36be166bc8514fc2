"""Overfit one clip: train the main job's config on a dataset of a single training clip, then sample its caption.

If training and sampling agree (the loss, the noise schedule, the sampler, the text conditioning and the
decoding), the sample reproduces the clip: PSNR >= 30 dB against the clip as training reads it. A model that
cannot reproduce its only clip cannot learn 288.

  python bench/perf/overfit_one_clip.py --out=/tmp/overfit [--config=configs/microsim_tiny.py] [--steps=2000] \
      [--guidance=1,5] [--set=optim.ema_decay=0]

Builds microsim_synth with 2 clips (one train, one validation) under OUT/tfds, trains in OUT/run (rerun to
resume), and prints the PSNR per guidance; --strip writes the clip over each sample as a PNG.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
from PIL import Image

from microverse_jax import build_dataset, files, pipeline, train, video
from microverse_jax.datasets.microsim_synth.render import stored_rows
from microverse_jax.launch import preflight

PASS_DB = 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB of two uint8 videos."""
  mse = np.mean(np.square(a.astype(np.float64) - b.astype(np.float64)))
  return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="a folder for the one-clip dataset and the run")
  p.add_argument("--config", default="configs/microsim_tiny.py", help="a config file[:arg]")
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--guidance", default="1,5", help="guidance scales to sample at")
  p.add_argument("--set", action="append", default=[], help="a config override KEY=VALUE (repeatable)")
  p.add_argument("--strip", default="", help="a PNG: the clip over each sample")
  a = p.parse_args(argv)
  c = preflight.load_config(a.config, [f"--config.{kv}" for kv in a.set])
  data_dir = os.path.join(a.out, "tfds")
  if not os.path.isdir(os.path.join(data_dir, "microsim_synth")):
    build_dataset.build("microsim_synth", data_dir, num_clips=2)
  c.data.data_dir, c.train.num_steps = data_dir, a.steps
  for name in c.evals:
    c.evals[name].every = 0  # the validation split is one clip: nothing to evaluate on
  workdir = os.path.join(a.out, "run")
  end = train.train(c, workdir)
  (row,) = stored_rows(data_dir, "train")
  clip = video.decode_frames(row["video"], c.data.num_frames, height=c.data.height, width=c.data.width)
  pipe = pipeline.Pipeline.from_workdir(workdir)
  result = {"steps": end["step"], "loss": end.get("loss"), "process": row["process"], "psnr_db": {}}
  strips = [pipeline.filmstrip(clip)]
  for g in (float(x) for x in a.guidance.split(",")):
    (sample,) = pipe([row["caption"]], guidance=g, seed=0)
    result["psnr_db"][g] = psnr(sample, clip)
    strips.append(pipeline.filmstrip(sample))
    verdict = "reproduces the clip" if result["psnr_db"][g] >= PASS_DB else f"below {PASS_DB:.0f} dB"
    print(
      f"overfit one clip ({row['process']}, {end['step']} steps): guidance {g:g}: "
      f"PSNR {result['psnr_db'][g]:.1f} dB, {verdict}",
      flush=True,
    )
  if a.strip:
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(np.concatenate(strips), 3, 0), 3, 1)).save(buffer, format="PNG")
    files.write_bytes(a.strip, buffer.getvalue())
  return result


if __name__ == "__main__":
  main()
