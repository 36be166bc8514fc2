"""Sampling throughput (denoising steps/s) of our WanDiT against diffusers' WanTransformer3DModel.

Both integrate the same flow-matching Euler sampler with classifier-free guidance (conditional and
unconditional passes share one batch of 2B) at a train_step.py size, in one process, with the
sampling runs interleaved (torch, ours, torch, ours, ...); figures are medians. Ours is
`diffusion.sample(diffusion.guided(...))` around one jitted model call per step, as `sample.py` runs
it; the reference is the same loop in PyTorch under `torch.inference_mode()`.

  python bench/perf/sampling.py                        # base size, 1 video, 8 steps
  python bench/perf/sampling.py --size=wide --steps=20 --repeats=3
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import train_step  # noqa: E402  (pins BENCH_THREADS cores before the CPU backend starts)
from flax import nnx  # noqa: E402

from microverse_jax import diffusion  # noqa: E402
from microverse_jax.models.wan_dit import WanDiT  # noqa: E402

GUIDANCE, SHIFT = 5.0, 5.0


def _inputs(cfg, fhw, text_len: int, videos: int):
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((videos, *fhw, cfg.in_channels), np.float32)
  context = rng.standard_normal((2 * videos, text_len, cfg.text_dim), np.float32)  # [cond; uncond]
  return noise, context


def make_ours(cfg, fhw, text_len: int, videos: int, steps: int):
  """() -> latents of one full sampling run (np array)."""
  model = WanDiT(cfg, rngs=nnx.Rngs(0))
  noise, context = _inputs(cfg, fhw, text_len, videos)
  noise, context = jnp.asarray(noise), jnp.asarray(context)
  velocity = nnx.jit(lambda m, x, t, ctx: m(x, t, ctx))

  def run():
    fn = diffusion.guided(lambda x, t: velocity(model, x, t, context), GUIDANCE)
    return np.asarray(diffusion.sample(fn, noise, steps, shift=SHIFT))

  return run


def make_torch(cfg, fhw, text_len: int, videos: int, steps: int):
  """() -> latents of one full PyTorch sampling run (np array, channels-last)."""
  import torch

  torch.set_num_threads(train_step.THREADS)
  model = train_step.torch_model(cfg).eval()
  noise, context = _inputs(cfg, fhw, text_len, videos)
  noise = torch.from_numpy(noise).permute(0, 4, 1, 2, 3).contiguous()
  context = torch.from_numpy(context)
  sigmas = diffusion.inference_sigmas(steps, SHIFT)

  def run():
    x = noise.clone()
    with torch.inference_mode():
      for i in range(steps):
        t = torch.full((2 * videos,), float(sigmas[i] * diffusion.NUM_TRAIN_TIMESTEPS))
        v = model(torch.cat([x, x]), t, context, return_dict=False)[0]
        v_cond, v_uncond = v.chunk(2)
        x = x + (v_uncond + GUIDANCE * (v_cond - v_uncond)) * float(sigmas[i + 1] - sigmas[i])
    return x.permute(0, 2, 3, 4, 1).numpy()

  return run


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="base", help=f"from {sorted(train_step.SIZES)}")
  p.add_argument("--videos", type=int, default=1, help="videos per run (model batch = 2x, CFG)")
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-torch", dest="torch", action="store_false")
  args = p.parse_args(argv)
  cfg, fhw, text_len, _ = train_step.model_config(args.size)
  runners = {"ours": make_ours(cfg, fhw, text_len, args.videos, args.steps)}
  if args.torch:
    runners["torch"] = make_torch(cfg, fhw, text_len, args.videos, args.steps)
  for run in runners.values():  # compile / warm up
    if not np.all(np.isfinite(run())):
      raise FloatingPointError("sampling produced non-finite latents")
  times: dict[str, list[float]] = {k: [] for k in runners}
  for _ in range(args.repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  result = {"size": args.size, "videos": args.videos, "steps": args.steps, "threads": train_step.THREADS}
  for name, ts in times.items():
    result[f"{name}_steps_per_s"] = args.steps / statistics.median(ts)
  line = (
    f"sampling {args.size}: {args.videos} video(s), CFG batch {2 * args.videos}, {args.steps} Euler steps | "
    f"ours {result['ours_steps_per_s']:.2f} steps/s"
  )
  if args.torch:
    result["speedup_vs_torch"] = result["ours_steps_per_s"] / result["torch_steps_per_s"]
    line += f" | torch {result['torch_steps_per_s']:.2f} steps/s | ours is {result['speedup_vs_torch']:.2f}x torch"
  print(f"backend {jax.default_backend()}, threads {train_step.THREADS}")
  print(line, flush=True)
  return result


if __name__ == "__main__":
  main()
