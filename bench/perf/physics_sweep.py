"""Sampling settings against physics, on held-out prompts: what the main job's eval settings are tuned on.

Samples a trained workdir's model for procedural prompts that no dataset split holds (clip specs of
another base seed, so the validation prompts that score the main job stay untouched) over a grid of
weights (EMA or raw), guidance, steps, shift and sampler, and prints one row of `microworldbench
physics` pass rates per setting.

  python bench/perf/physics_sweep.py --workdir=workdir/tiny --guidance=1,3,5 --steps=25,50
  python bench/perf/physics_sweep.py --workdir=workdir/tiny --denoise=0,0.3,0.6,0.9

--denoise asks where a failing model loses the physics: each held-out ground-truth clip, reduced to
the model's frames and size, is noised to each sigma and the model's one-step clean estimate is
scored (sigma 0: the reduced ground truth itself). Passing at low sigma and failing from noise means
the model knows the motion once the scene is laid out but cannot lay it out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax import (
  checkpoint,
  diffusion,
  encoders as encoders_lib,
  files,
  plans,
  saved_config,
  sharding,
  train_state,
  video,
)
from microverse_jax.datasets.microsim_synth import DEFAULTS, PROCESSES, clip_spec
from microverse_jax.datasets.microsim_synth.render import stored_clip
from microverse_jax.evaluators import physics


def held_out_specs(count: int, seed: int) -> list:
  """`count` clip specs of base seed `seed` (every process in turn), at the dataset's build settings."""
  if seed == DEFAULTS["seed"]:
    raise ValueError(f"--seed={seed} is the dataset's own: its validation prompts must not be tuned on")
  d = DEFAULTS
  return [clip_spec(i, seed=seed, num_frames=d["num_frames"], size=d["size"], fps=d["fps"]) for i in range(count)]


def denoised(c, model, encoders, tokenizer, specs, sigma: float) -> list[np.ndarray]:
  """One-step clean estimates uint8 (F, H, W, 3) of the specs' ground-truth clips noised to `sigma`."""
  settings = {k: DEFAULTS[k] for k in ("num_frames", "size", "fps")}
  clips = [
    stored_clip(s.process, s.params, seed=s.seed, **settings, out=(c.data.num_frames, c.data.height, c.data.width))
    for s in specs
  ]
  x0 = encoders.encode(jnp.asarray(video.to_model_range(np.stack(clips))))
  if sigma > 0:
    noise = jax.random.normal(jax.random.key(0), x0.shape)
    x_t, t = (1 - sigma) * x0 + sigma * noise, jnp.full((len(specs),), sigma * diffusion.NUM_TRAIN_TIMESTEPS)
    context = encoders.text(*map(jnp.asarray, tokenizer([s.caption for s in specs])))
    v = diffusion.to_velocity(model(x_t, t, context), x_t, t / diffusion.NUM_TRAIN_TIMESTEPS, c.diffusion.prediction)
    x0 = x_t - sigma * v
  frames = np.asarray(encoders.decode(x0))
  return list(np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompts", type=int, default=20, help="held-out prompts (default 20: 4 per process)")
  parser.add_argument("--seed", type=int, default=1, help="base seed of the held-out clip specs (not 0)")
  parser.add_argument("--weights", default="ema,params", help="ema and/or params (raw weights)")
  parser.add_argument("--guidance", default="1,3,5")
  parser.add_argument("--steps", default="25")
  parser.add_argument("--shift", default="", help="default: the run's diffusion.shift")
  parser.add_argument("--sampler", default="", help="default: the run's sample.sampler")
  parser.add_argument("--denoise", default="", help="sigmas: score one-step estimates of noised ground truth instead")
  parser.add_argument("--out", help="also write the rows here (JSON lines)")
  args = parser.parse_args(argv)
  from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

  c = saved_config.get_config(args.workdir)
  floats = lambda s, default: [float(x) for x in s.split(",")] if s else [default]
  specs = held_out_specs(args.prompts, args.seed)
  rows = [{"caption": s.caption, "process": s.process, "params": s.params, "size": DEFAULTS["size"]} for s in specs]
  plan = plans.resolve(c, jax.device_count())
  mesh, rules = sharding.make_mesh(plan.mesh_shape), plan.rules
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    tokenizer, encoders = encoders_lib.build_encoders(plan, mesh)
    states = train_state.StateFactory(plan, mesh)
    ckpt = checkpoint.Checkpointer(args.workdir, async_save=False)
    step = ckpt.latest_step()
    state = ckpt.restore(step, states.abstract()[0], None)
    ckpt.close()
    frozen = states.create_frozen()
    if args.denoise:
      grid = [(w, None, None, sigma, None) for w in args.weights.split(",") for sigma in floats(args.denoise, 0)]
    else:
      grid = itertools.product(
        args.weights.split(","),
        floats(args.guidance, c.sample.guidance),
        [int(x) for x in floats(args.steps, c.sample.steps)],
        floats(args.shift, c.diffusion.shift),
        (args.sampler or c.sample.sampler).split(","),
      )
    out = []
    for weights, guidance, steps, shift, sampler in grid:
      if weights not in state:
        print(f"skipping weights={weights}: the run keeps no such weights", flush=True)
        continue
      model = nnx.merge(states.graphdef, state[weights], frozen)
      start = time.time()
      if args.denoise:
        settings = dict(denoise_sigma=shift)
        scores = score_videos(denoised(c, model, encoders, tokenizer, specs, shift), rows)
      else:
        settings = dict(guidance=guidance, steps=steps, shift=shift, sampler=sampler)
        scores = physics.score_rows(plan, model, tokenizer, encoders, rows, seed=0, batch_size=len(rows), **settings)
      row = {"step": step, "weights": weights, **settings, "pass": round(scores["physics/pass_rate"], 3)}
      rate = lambda key: None if math.isnan(scores.get(key, math.nan)) else round(scores[key], 2)  # JSON: null
      row.update({p: rate(f"physics/{p}/pass_rate") for p in PROCESSES})
      row.update(flicker=rate("physics/check/temporal/flicker"), seconds=round(time.time() - start))
      print(json.dumps(row), flush=True)
      out.append(row)
  if args.out:
    files.write_text(args.out, "".join(json.dumps(r) + "\n" for r in out))
  return out


if __name__ == "__main__":
  main()
