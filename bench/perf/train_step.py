"""Training step (forward, backward, AdamW) of our WanDiT against diffusers' WanTransformer3DModel.

Both run the same config, batch and optimizer in one process, on the same machine, with repeats
interleaved (torch, ours, torch, ours, ...) so that a noisy shared machine slows both alike; the
figures are medians. Ours is the trainer's own step (`train_step.make_train_step`: flow-matching inputs,
weighted MSE, AdamW), jitted with the state donated; the reference does the same in PyTorch.
Model FLOPs are analytic (`microverse_jax.flops`, 3 x forward matmuls); the CPU MFU is achieved
FLOP/s over the best measured large-fp32-matmul rate (the practical peak of this CPU).

  python bench/perf/train_step.py                          # the CPU perf config ("base")
  python bench/perf/train_step.py --sizes=base,wide,long --repeats=7 --json=/tmp/train_step.json
  python bench/perf/train_step.py --override=remat_policy=none --no-torch   # ours alone, no remat
  python bench/perf/train_step.py --no-torch --variant=remat_policy=nothing_saveable   # an A/B of ours
  python bench/perf/train_step.py --no-torch --variant=xla_cpu_use_xnnpack=true   # an XLA option, per executable
  BENCH_THREADS=1 python bench/perf/train_step.py      # one core each (fairer on a loaded machine)

Sizes (fp32, batch 2, patch (1, 2, 2), 16 latent channels, text width 256 x 64 tokens):
  base  6 layers, 6 heads x 64, FFN 1536, latents 5x16x16 (320 tokens)   ~56 GFLOP per step
  wide  6 layers, 10 heads x 64, FFN 2560, latents 5x16x16 (320 tokens)  ~145 GFLOP
  long  6 layers, 6 heads x 64, FFN 1536, latents 9x24x24 (1296 tokens)  ~290 GFLOP
"""

from __future__ import annotations

import os

# BENCH_THREADS=N: XLA:CPU has no thread-count flag (it sizes its pools from the CPUs the process may
# run on), so the process is pinned to N cores before jax is imported; torch gets set_num_threads(N).
THREADS = int(os.environ.get("BENCH_THREADS", len(os.sched_getaffinity(0))))
if THREADS < len(os.sched_getaffinity(0)):
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:THREADS])

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax import diffusion, flops, plans, train_state, train_step
from microverse_jax.configs import base
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig

COMMON = dict(
  patch_size=(1, 2, 2), head_dim=64, in_channels=16, out_channels=16, text_dim=256, freq_dim=256, rope_max_seq_len=1024
)
SIZES = {  # name -> (model fields, latents (F, H, W), text tokens, batch)
  "base": (dict(num_heads=6, ffn_dim=1536, num_layers=6), (5, 16, 16), 64, 2),
  "wide": (dict(num_heads=10, ffn_dim=2560, num_layers=6), (5, 16, 16), 64, 2),
  "long": (dict(num_heads=6, ffn_dim=1536, num_layers=6), (9, 24, 24), 64, 2),
  "tiny": (
    dict(num_heads=2, ffn_dim=128, num_layers=2, head_dim=16, text_dim=32, freq_dim=32, in_channels=4, out_channels=4),
    (3, 8, 8),
    8,
    2,
  ),
}
# How ours runs on CPU. dots_saveable (keep matmul outputs, recompute the elementwise ops in the
# backward pass) is 1.21x faster than no remat here: fewer per-layer residual buffers for the
# layer scan to stack (see BENCHMARKS.md). --override=remat_policy=none restores the default.
CPU_RUN = dict(dtype="float32", attention_impl="xla", remat_policy="dots_saveable")
OPTIM = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)


def model_config(size: str, **overrides) -> tuple[WanDiTConfig, tuple[int, int, int], int, int]:
  """(WanDiTConfig fp32, latents (F, H, W), text tokens, batch) of a named size."""
  if size not in SIZES:
    raise ValueError(f"--sizes: unknown size {size!r}; expected one of {sorted(SIZES)}")
  fields, fhw, text_len, batch = SIZES[size]
  cfg = WanDiTConfig(**{**COMMON, **fields, **CPU_RUN, **overrides})
  return cfg, fhw, text_len, batch


def trainer_plan(cfg: WanDiTConfig, batch: int) -> plans.Plan:
  """A plan over the base config with the few fields `train_step.make_train_step` / `make_optimizer` read."""
  c = base.get_config()
  c.optim.update(**OPTIM, warmup_steps=0, schedule="constant", grad_clip=0.0, grad_accum=1, ema_decay=0.0)
  c.train.update(num_steps=1000, caption_dropout=0.0, on_nonfinite="stop")
  c.diffusion.update(shift=5.0, prediction="velocity")
  c.data.batch_size = batch
  fields = dict(vae=None, text=None, latent_shape=(), frame_buckets=(), mesh_shape={}, rules=())
  return plans.Plan(c=c, dit=cfg, num_steps=1000, peak_lr=c.optim.lr, **fields)


def make_ours(cfg: WanDiTConfig, fhw, text_len: int, batch: int, return_compiled: bool = False, compiler_options=None):
  """() -> runs one jitted training step of ours (state donated and carried over); with
  `return_compiled`, (run, the compiled step) for its memory analysis. `compiler_options`: XLA
  DebugOptions for this executable only (e.g. {"xla_cpu_use_xnnpack": True})."""
  plan = trainer_plan(cfg, batch)
  tx, schedule = train_state.make_optimizer(plan)
  model = WanDiT(cfg, rngs=nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  params = params.to_pure_dict()
  state = {
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(jax.random.key(0)),
    "skipped": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": tx.init(params),
  }
  frozen = frozen.to_pure_dict()
  step_fn = train_step.make_train_step(plan, graphdef, tx, schedule)
  rng = np.random.default_rng(0)
  batch_arrays = {
    "latents": jnp.asarray(rng.standard_normal((batch, *fhw, cfg.in_channels), np.float32)),
    "context": jnp.asarray(rng.standard_normal((batch, text_len, cfg.text_dim), np.float32)),
  }
  encode = lambda b: (b["latents"], b["context"], None)
  jitted = jax.jit(lambda s, f, b: step_fn(s, f, encode, b), donate_argnums=(0,))
  jitted = jitted.lower(state, frozen, batch_arrays).compile(compiler_options)
  holder = {"state": state}

  def run():
    holder["state"], metrics = jitted(holder["state"], frozen, batch_arrays)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"])

  return (run, jitted) if return_compiled else run


def torch_model(cfg: WanDiTConfig):
  """diffusers' WanTransformer3DModel with the same architecture (the test-only reference)."""
  import torch
  from diffusers import WanTransformer3DModel

  torch.manual_seed(0)
  return WanTransformer3DModel(
    patch_size=cfg.patch_size,
    num_attention_heads=cfg.num_heads,
    attention_head_dim=cfg.head_dim,
    in_channels=cfg.in_channels,
    out_channels=cfg.out_channels,
    text_dim=cfg.text_dim,
    freq_dim=cfg.freq_dim,
    ffn_dim=cfg.ffn_dim,
    num_layers=cfg.num_layers,
    cross_attn_norm=cfg.cross_attn_norm,
    qk_norm=cfg.qk_norm,
    eps=cfg.eps,
    rope_max_seq_len=cfg.rope_max_seq_len,
  )


def make_torch(cfg: WanDiTConfig, fhw, text_len: int, batch: int):
  """() -> runs one PyTorch training step of diffusers' WanTransformer3DModel (same config)."""
  import torch

  torch.set_num_threads(THREADS)
  model = torch_model(cfg).train()
  opt = torch.optim.AdamW(
    model.parameters(),
    lr=OPTIM["lr"],
    betas=(OPTIM["b1"], OPTIM["b2"]),
    eps=OPTIM["eps"],
    weight_decay=OPTIM["weight_decay"],
  )
  fm = diffusion.FlowMatching(shift=5.0)
  sigmas, weights = torch.from_numpy(fm.sigmas), torch.from_numpy(fm.loss_weights)
  rng = np.random.default_rng(0)
  x0 = torch.from_numpy(rng.standard_normal((batch, cfg.in_channels, *fhw), np.float32))
  ctx = torch.from_numpy(rng.standard_normal((batch, text_len, cfg.text_dim), np.float32))

  def run():
    index = torch.randint(0, diffusion.NUM_TRAIN_TIMESTEPS, (batch,))
    noise = torch.randn_like(x0)
    s = sigmas[index].view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    v = model(x_t, sigmas[index] * diffusion.NUM_TRAIN_TIMESTEPS, ctx, return_dict=False)[0]
    loss = (torch.mean(torch.square(v - (noise - x0)), dim=(1, 2, 3, 4)) * weights[index]).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  return run


def matmul_peak(n: int = 3072, iters: int = 5) -> dict[str, float]:
  """Best fp32 GFLOP/s of an n x n x n matmul in JAX (XLA) and in torch: the practical peak."""
  out = {}
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  mm = jax.jit(jnp.dot)
  out["jax"] = 2 * n**3 / _best_time(lambda: mm(a, a).block_until_ready(), iters) / 1e9
  try:
    import torch

    torch.set_num_threads(THREADS)
    t = torch.from_numpy(np.asarray(a))
    out["torch"] = 2 * n**3 / _best_time(lambda: torch.mm(t, t), iters) / 1e9
  except ImportError:
    pass
  return out


def _best_time(fn, iters: int) -> float:
  fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def bench_size(size: str, repeats: int, with_torch: bool, overrides: dict, variants: tuple[dict, ...] = ()) -> dict:
  """Medians of ours (with `overrides`), each of `variants` (ours with more overrides: an A/B in one
  process) and torch, interleaved."""
  cfg, fhw, text_len, batch = model_config(size, **overrides)
  step_flops = flops.train_step_flops(cfg, batch, fhw, text_len)
  runners = {"ours": make_ours(cfg, fhw, text_len, batch)}
  for variant in variants:
    name = "ours[" + ",".join(f"{k}={v}" for k, v in variant.items()) + "]"
    fields = {k: v for k, v in variant.items() if not k.startswith("xla_")}
    xla = {k: v for k, v in variant.items() if k.startswith("xla_")} or None
    runners[name] = make_ours(
      model_config(size, **{**overrides, **fields})[0], fhw, text_len, batch, compiler_options=xla
    )
  if with_torch:
    runners["torch"] = make_torch(cfg, fhw, text_len, batch)
  times: dict[str, list[float]] = {k: [] for k in runners}
  compile_start = time.perf_counter()
  for fn in runners.values():  # compile / warm up
    fn()
  warmup_s = time.perf_counter() - compile_start
  for _ in range(repeats):  # interleaved: both see the same machine load
    for name, fn in runners.items():
      start = time.perf_counter()
      loss = fn()
      times[name].append(time.perf_counter() - start)
      if not np.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite loss {loss} at size {size}")
  row = {
    "size": size,
    "batch": batch,
    "latents": list(fhw),
    "text_len": text_len,
    "dim": cfg.dim,
    "ffn": cfg.ffn_dim,
    "layers": cfg.num_layers,
    "tokens": int(np.prod([s // p for s, p in zip(fhw, cfg.patch_size)])),
    "model_gflop": step_flops / 1e9,
    "warmup_s": warmup_s,
    "overrides": overrides,
  }
  for name, ts in times.items():
    med = statistics.median(ts)
    row[f"{name}_s"] = med
    row[f"{name}_gflops"] = step_flops / med / 1e9
  if with_torch:
    row["speedup_vs_torch"] = row["torch_s"] / row["ours_s"]
  for name in runners:
    if name.startswith("ours["):
      row[f"{name}_vs_ours"] = row["ours_s"] / row[f"{name}_s"]
  return row


def _parse_overrides(items: list[str], xla_ok: bool = False) -> dict:
  """FIELD=VALUE strings -> {field: typed value}; with `xla_ok`, xla_* XLA DebugOptions too (bool,
  int or enum-name values), applied per executable."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if xla_ok and sep and key.startswith("xla_"):
      out[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
      continue
    if not sep or key not in WanDiTConfig.__dataclass_fields__:
      raise ValueError(f"--override={item!r}: expected FIELD=VALUE with a WanDiTConfig field")
    default = WanDiTConfig.__dataclass_fields__[key].default
    out[key] = type(default)(value) if not isinstance(default, bool) else value.lower() in ("1", "true")
  return out


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="base", help=f"comma-separated, from {sorted(SIZES)}")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-torch", dest="torch", action="store_false")
  p.add_argument("--no-peak", dest="peak", action="store_false", help="skip the matmul-peak measure")
  p.add_argument("--override", action="append", default=[], help="WanDiTConfig FIELD=VALUE for ours")
  p.add_argument(
    "--variant",
    action="append",
    default=[],
    help="FIELD=VALUE (a WanDiTConfig field or an xla_* XLA option): also time ours with it, interleaved (an A/B)",
  )
  p.add_argument("--json", default="", help="also write the rows here")
  args = p.parse_args(argv)
  overrides = _parse_overrides(args.override)
  peak = matmul_peak() if args.peak else {}
  best_peak = max(peak.values()) if peak else None
  print(f"backend {jax.default_backend()}, threads {THREADS} (cores {sorted(os.sched_getaffinity(0))})")
  if peak:
    print("fp32 matmul 3072^3 (best of 5): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
  rows = []
  for size in args.sizes.split(","):
    row = bench_size(
      size, args.repeats, args.torch, overrides, tuple(_parse_overrides([v], xla_ok=True) for v in args.variant)
    )
    if best_peak:
      row["matmul_peak_gflops"] = best_peak
      row["ours_cpu_mfu"] = row["ours_gflops"] / best_peak
      if args.torch:
        row["torch_cpu_mfu"] = row["torch_gflops"] / best_peak
    rows.append(row)
    line = (
      f"{size:5s} T={row['tokens']:5d} E={row['dim']:4d} {row['model_gflop']:7.1f} GFLOP/step | "
      f"ours {row['ours_s']:.3f} s ({row['ours_gflops']:.0f} GFLOP/s"
    )
    line += f", MFU {row['ours_cpu_mfu']:.0%})" if best_peak else ")"
    if args.torch:
      line += (
        f" | torch {row['torch_s']:.3f} s ({row['torch_gflops']:.0f} GFLOP/s)"
        f" | ours is {row['speedup_vs_torch']:.2f}x torch"
      )
    for name in row:
      if name.endswith("_vs_ours"):
        variant = name[: -len("_vs_ours")]
        line += f" | {variant} {row[variant + '_s']:.3f} s: {row[name]:.2f}x ours"
    print(line, flush=True)
  if args.json:
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(args.json)), delete=False) as f:
      json.dump({"peak_gflops": peak, "rows": rows}, f, indent=1)
    os.replace(f.name, args.json)
  return rows


if __name__ == "__main__":
  main()
