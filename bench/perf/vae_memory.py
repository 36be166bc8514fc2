"""Compiled memory of Wan-VAE encode / decode versus clip length: chunked (scan) against one-shot.

  python bench/perf/vae_memory.py --height 128 --width 128 --frames 17 81

Compiles only (no weights, no run): `jax.jit(encode).lower(...).compile().memory_analysis()` on
the default backend for the Wan2.1 VAE, and prints a markdown table. "chunked" is the default
(1 + 4 frames per scan step); "one-shot" puts all frames after the first in one step, which is
what the activations would cost without the causal feature cache.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig


def compiled_memory(cfg: WanVAEConfig, method: str, shape: tuple[int, ...]) -> dict[str, int]:
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))
  mem = fn.lower(state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile().memory_analysis()
  return {"args": mem.argument_size_in_bytes, "out": mem.output_size_in_bytes, "temp": mem.temp_size_in_bytes}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--frames", type=int, nargs="+", default=[17, 81])
  parser.add_argument("--batch", type=int, default=1)
  args = parser.parse_args()
  base = WanVAEConfig.preset("wan2.1")
  s, t = base.spatial_factor, base.temporal_factor
  mib = lambda n: f"{n / 2**20:,.1f}"
  print(f"Wan2.1 VAE, batch {args.batch}, {args.height}x{args.width}, fp32, backend {jax.default_backend()}\n")
  print("| op | frames | mode | args MiB | output MiB | temp MiB |")
  print("|---|---|---|---|---|---|")
  for frames in args.frames:
    latent_frames = 1 + (frames - 1) // t
    video = (args.batch, frames, args.height, args.width, 3)
    latents = (args.batch, latent_frames, args.height // s, args.width // s, base.z_dim)
    for op, shape, one_shot in (
      ("encode", video, dict(encode_chunk_frames=frames - 1)),
      ("decode", latents, dict(decode_chunk_latents=latent_frames - 1)),
    ):
      for mode, cfg in (("chunked", base), ("one-shot", dataclasses.replace(base, **one_shot))):
        m = compiled_memory(cfg, op, shape)
        print(f"| {op} | {frames} | {mode} | {mib(m['args'])} | {mib(m['out'])} | {mib(m['temp'])} |", flush=True)


if __name__ == "__main__":
  main()
