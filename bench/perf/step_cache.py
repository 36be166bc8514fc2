"""Sampling caches: speed-up against quality, side by side in one process.

Samples the same prompts with the same noise with no cache, with the step cache at each threshold,
and with the CFG cache, interleaved (plain, cached, plain, cached, ...; medians). Quality: max abs
difference and PSNR of each cached video against the uncached one, and with --physics the
`microworldbench physics` pass rate of both on the procedural validation prompts.

  python bench/perf/step_cache.py --workdir=workdir/tiny --physics=32         # the main job's model
  python bench/perf/step_cache.py --converted=DIR --config=configs/wan2_1.py:1.3b,lora,runlocal
  python bench/perf/step_cache.py                                            # a tiny random DiT
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np

from microverse_jax import pipeline, plans


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def load(args) -> pipeline.Pipeline:
  if args.workdir:
    return pipeline.Pipeline.from_workdir(args.workdir)
  path, _, arg = args.config.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  if args.converted:
    return pipeline.Pipeline.from_pretrained(args.converted, config=c)
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from microverse_jax.models.wan_dit import WanDiT  # pylint: disable=g-import-not-at-top

  return pipeline.Pipeline.build(c, WanDiT(plans.dit_config(c), rngs=nnx.Rngs(0)))


def prompts_for(args, pipe) -> tuple[list[str], list[dict] | None]:
  """The config's prompts, or with --physics the first validation clips (by id) of the procedural dataset
  in the config's data_dir and their records to score against."""
  if not args.physics:
    return list(pipe.config.evals.samples.prompts), None
  from microverse_jax.datasets.microsim_synth import render  # pylint: disable=g-import-not-at-top

  rows = render.stored_rows(pipe.config.data.data_dir, "validation")[: args.physics]
  return [r["caption"] for r in rows], rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", help="a training workdir (its config and latest checkpoint)")
  p.add_argument("--converted", help="a converted / diffusers DiT checkpoint (with --config)")
  p.add_argument("--config", default="configs/microsim_tiny.py:test", help="config file[:arg] without --workdir")
  p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
  p.add_argument("--thresholds", default="0.02,0.05,0.1", help="step-cache thresholds to measure")
  p.add_argument("--repeats", type=int, default=3, help="timed runs of each setting (medians)")
  p.add_argument("--physics", type=int, default=0, help="score this many validation prompts' physics")
  args = p.parse_args(argv)
  pipe = load(args)
  prompts, rows = prompts_for(args, pipe)
  base = {} if args.steps is None else {"steps": args.steps}
  settings = {
    "none": {},
    **{f"step_cache={t}": {"step_cache": float(t)} for t in args.thresholds.split(",")},
    "cfg_cache": {"cfg_cache": True},
  }
  times = {name: [] for name in settings}
  videos = {name: pipe(prompts, seed=0, **base, **kw) for name, kw in settings.items()}  # also compiles
  for _ in range(args.repeats):
    for name, kw in settings.items():  # interleaved: the machine's noise hits every setting alike
      t = time.perf_counter()
      pipe(prompts, seed=0, **base, **kw)
      times[name].append(time.perf_counter() - t)
  ref = videos["none"]
  scores = {}
  if rows is not None:
    from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

    scores = {name: score_videos(v, rows) for name, v in videos.items()}
  print(
    f"{len(prompts)} prompts, {pipe.config.sample.steps if args.steps is None else args.steps} steps, "
    f"guidance {pipe.config.sample.guidance}"
  )
  print("| setting | median s | speed-up | max abs diff (uint8) | PSNR dB | physics pass | flicker pass |")
  print("|---|---|---|---|---|---|---|")
  t0 = statistics.median(times["none"])
  for name in settings:
    t = statistics.median(times[name])
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(videos[name], ref))
    quality = min(psnr(a, b) for a, b in zip(videos[name], ref))
    s = scores.get(name, {})
    print(
      f"| {name} | {t:.2f} | {t0 / t:.2f}x | {diff} | {quality:.1f} | "
      f"{s.get('physics/pass_rate', float('nan')):.2f} | {s.get('physics/check/temporal/flicker', float('nan')):.2f} |"
    )


if __name__ == "__main__":
  main()
