"""A/B of fused attention projections in the training step: one QKV matmul for self-attention and
one KV matmul for cross-attention (kernels concatenated along the output axis), against the model's
separate q, k, v matmuls. Same weights, same losses; both steps compiled in one process and timed
interleaved, medians (issue 19's "fewer, larger GEMMs" hypothesis).

  python bench/perf/fused_projections.py                    # base perf config, 9 repeats
  python bench/perf/fused_projections.py --size=wide --repeats=5
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import train_step  # noqa: E402  (pins BENCH_THREADS cores before the CPU backend starts)

from microverse_jax.models import wan_dit  # noqa: E402


def fused_dense(layers, x):
  """[layer(x) for layer in layers] as one matmul against the concatenated kernels (no LoRA)."""
  dt = layers[0].dtype
  w = jnp.concatenate([l.kernel[...].astype(dt) for l in layers], axis=1)
  b = jnp.concatenate([l.bias[...].astype(dt) for l in layers])
  return jnp.split(jnp.dot(x.astype(dt), w) + b, len(layers), axis=-1)


def fused_project(self, x, src):
  """wan_dit.Attention.project with the projections fused: QKV (self-attention) or KV (cross)."""
  if src is x:
    return tuple(fused_dense([self.q, self.k, self.v], x))
  return (self.q(x), *fused_dense([self.k, self.v], src))


@contextlib.contextmanager
def fused_projections():
  """Within: WanDiT traces with fused projections."""
  separate = wan_dit.Attention.project
  wan_dit.Attention.project = fused_project
  try:
    yield
  finally:
    wan_dit.Attention.project = separate


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="base", help=f"one of {sorted(train_step.SIZES)}")
  p.add_argument("--repeats", type=int, default=9)
  args = p.parse_args(argv)
  cfg, fhw, text_len, batch = train_step.model_config(args.size)
  runners = {"separate": train_step.make_ours(cfg, fhw, text_len, batch)}
  with fused_projections():  # make_ours compiles, so the fused trace is taken here
    runners["fused"] = train_step.make_ours(cfg, fhw, text_len, batch)
  out = {"first_loss": {name: fn() for name, fn in runners.items()}}
  times = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, fn in runners.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  out.update({f"{name}_s": statistics.median(ts) for name, ts in times.items()})
  out["fused_vs_separate"] = out["separate_s"] / out["fused_s"]
  print(
    f"{args.size}: separate {out['separate_s']:.3f} s, fused {out['fused_s']:.3f} s per step: "
    f"fused is {out['fused_vs_separate']:.2f}x (first losses {out['first_loss']})",
    flush=True,
  )
  return out


if __name__ == "__main__":
  main()
