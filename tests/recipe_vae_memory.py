"""Wan-VAE decode memory, tiled vs untiled (docs/recipe.md's figures). Not a test: run by hand.

  python tests/recipe_vae_memory.py FRAMES HEIGHT WIDTH tiled|untiled float32|bfloat16 [run]

Prints one JSON line: XLA's compiled memory analysis (temp, argument, output bytes) of decode for
one clip with the released Wan2.1 VAE architecture (random weights), the compile time, and with
`run` the device's measured peak bytes and the decode time (second call).
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig


def main(frames, height, width, mode, dtype, run=""):
  frames, height, width = int(frames), int(height), int(width)
  cfg = WanVAEConfig.preset("wan2.1", dtype=dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  z = jax.ShapeDtypeStruct((1, 1 + (frames - 1) // 4, height // 8, width // 8, cfg.z_dim), jnp.float32)
  decode = jax.jit(lambda state, latents: nnx.merge(graphdef, state).decode(latents, tiled=mode == "tiled"))
  t = time.time()
  compiled = decode.lower(abstract, z).compile()
  out = {
    "frames": frames,
    "height": height,
    "width": width,
    "mode": mode,
    "dtype": dtype,
    "device": jax.devices()[0].device_kind,
    "compile_s": round(time.time() - t, 1),
  }
  mem = compiled.memory_analysis()
  if mem is not None:
    out.update(
      temp_gib=mem.temp_size_in_bytes / 2**30,
      argument_gib=mem.argument_size_in_bytes / 2**30,
      output_gib=mem.output_size_in_bytes / 2**30,
    )
  if run:
    state = jax.jit(lambda: nnx.state(WanVAE(cfg, rngs=nnx.Rngs(0))))()
    latents = jax.random.normal(jax.random.key(0), z.shape, z.dtype)
    compiled(state, latents).block_until_ready()
    t = time.time()
    compiled(state, latents).block_until_ready()
    out["decode_s"] = round(time.time() - t, 2)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      out["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
