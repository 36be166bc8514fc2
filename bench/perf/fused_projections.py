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

from microverse_jax.kernels.attention import attention  # noqa: E402
from microverse_jax.models import wan_dit  # noqa: E402
from microverse_jax.models.layers import apply_rope  # noqa: E402


def fused_dense(layers, x):
  """[layer(x) for layer in layers] as one matmul against the concatenated kernels (no LoRA)."""
  dt = layers[0].dtype
  w = jnp.concatenate([l.kernel[...].astype(dt) for l in layers], axis=1)
  b = jnp.concatenate([l.bias[...].astype(dt) for l in layers])
  return jnp.split(jnp.dot(x.astype(dt), w) + b, len(layers), axis=-1)


def fused_attention_call(self, x, context=None, rope=None, kv_mask=None):
  """wan_dit.Attention.__call__ with the projections fused: QKV (self) or KV (cross)."""
  if context is None:
    q, k, v = fused_dense([self.q, self.k, self.v], x)
  else:
    q, (k, v) = self.q(x), fused_dense([self.k, self.v], context)
  split = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)
  q, k, v = split(self.norm_q(q)), split(self.norm_k(k)), split(v)
  if rope is not None:
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
  return self.o(attention(q, k, v, kv_mask=kv_mask, impl=self.impl).reshape(*x.shape[:2], -1))


@contextlib.contextmanager
def fused_projections():
  """Within: WanDiT traces with fused projections."""
  separate = wan_dit.Attention.__call__
  wan_dit.Attention.__call__ = fused_attention_call
  try:
    yield
  finally:
    wan_dit.Attention.__call__ = separate


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
