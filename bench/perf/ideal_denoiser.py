"""The ideal denoiser of the main job's training set, as a reference for the sampler, the scorer and a network.

For a finite training set {x_i}, the exact posterior mean under the data distribution is a softmax over the
clips (shared/notes/diffusion-objectives.md):

  E[x0 | x_t] = sum_i softmax_i(-|x_t - (1 - s) x_i|^2 / (2 s^2)) x_i,    x_t = (1 - s) x0 + s n

restricted here to the training clips of the prompt's process (the conditional version). Two measurements:

1. Sampling: the config's sampler (steps, shift, solver) integrates the ideal velocity (x_t - E[x0|x_t]) / s
   for the first --num_clips validation prompts. It must give back training clips (PSNR to the nearest one)
   that pass `microworldbench physics` as those clips themselves do: the sampler -> scorer chain works.
2. The x0 error per noise level s of held-out (validation) clips, in the model's range [-1, 1]: the ideal
   denoiser, the per-process mean clip (the best blurry answer), and with --workdir a trained network's
   one-step estimate. Where the network's curve leaves the ideal one is where it falls short.

  python bench/perf/ideal_denoiser.py --config=configs/microsim_tiny.py [--workdir=workdir/tiny] \
      [--num_clips=16] [--plot=bench/perf/figures/ideal_denoiser.png]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from microverse_jax import diffusion, pipeline, saved_config, video
from microverse_jax.datasets.microsim_synth.render import stored_rows
from microverse_jax.launch import preflight

SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)


def load_clips(c, split: str) -> tuple[list[dict], np.ndarray]:
  """(rows by id, clips float32 (N, F, H, W, 3) in [-1, 1] at the config's data size, as training reads them)."""
  rows = stored_rows(c.data.data_dir, split)
  size = dict(height=c.data.height, width=c.data.width)
  clips = [video.decode_frames(r["video"], c.data.num_frames, **size) for r in rows]
  return rows, np.asarray(video.to_model_range(np.stack(clips)), np.float32)


def ideal_x0(x_t: jax.Array, sigma: jax.Array, clips: jax.Array, allowed: jax.Array) -> jax.Array:
  """E[x0 | x_t] (B, ...) over `clips` (N, ...), clip i counted for row b where allowed (B, N); sigma (B,)."""
  flat = clips.reshape(clips.shape[0], -1)
  x = x_t.reshape(x_t.shape[0], -1)
  s = sigma[:, None]
  # |x - (1 - s) x_i|^2 without the term common to every i
  dist = -2 * (1 - s) * (x @ flat.T) + (1 - s) ** 2 * jnp.sum(flat * flat, axis=1)[None]
  logits = jnp.where(allowed, -dist / (2 * s**2), -jnp.inf)
  return (jax.nn.softmax(logits, axis=1) @ flat).reshape(x_t.shape)


def sample_ideal(c, clips, allowed, seed: int) -> np.ndarray:
  """Clips (B, F, H, W, 3) in [-1, 1] sampled with the config's sampler from the ideal denoiser."""

  @jax.jit
  def velocity(x, t):
    s = t / diffusion.NUM_TRAIN_TIMESTEPS
    return (x - ideal_x0(x, s, clips, allowed)) / s[:, None, None, None, None]

  noise = jax.random.normal(jax.random.key(seed), (allowed.shape[0], *clips.shape[1:]), jnp.float32)
  return np.asarray(
    diffusion.sample(velocity, noise, c.sample.steps, shift=c.diffusion.shift, sampler=c.sample.sampler)
  )


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PSNR in dB of clips in [-1, 1] (peak-to-peak 2), per clip."""
  mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))
  return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)


def network_denoiser(workdir: str, rows):
  """x0(x_t (B, ...), sigma (B,)): a trained workdir's one-step x0 estimate for the rows' captions, its
  model and encoders loaded once (pipeline.Pipeline; pixel-space configs)."""
  pipe = pipeline.Pipeline.from_workdir(workdir)
  context = pipe.encoders.text(*map(jnp.asarray, pipe.tokenizer([r["caption"] for r in rows])))
  prediction = pipe.config.diffusion.prediction

  def x0(x_t, sigma):
    t = sigma * diffusion.NUM_TRAIN_TIMESTEPS
    v = diffusion.to_velocity(pipe.model(x_t, t, context), x_t, sigma, prediction)
    return np.asarray(x_t - sigma[:, None, None, None, None] * v)

  return x0


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/microsim_tiny.py", help="a config file[:arg] (ignored with --workdir)")
  p.add_argument("--data_dir", default="", help="the dataset's TFDS dir (default: the config's data.data_dir)")
  p.add_argument("--workdir", default="", help="a trained run: its config, and its network's x0 error curve")
  p.add_argument("--num_clips", type=int, default=16, help="validation prompts to sample and score")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--plot", default="", help="a PNG of the x0 error per noise level")
  a = p.parse_args(argv)
  c = saved_config.get_config(a.workdir) if a.workdir else preflight.load_config(a.config)
  if a.data_dir:
    c.data.data_dir = a.data_dir
  if c.autoencoder.kind != "pixel" or c.data.name != "microsim_synth":
    raise ValueError("the ideal denoiser runs in pixel space on microsim_synth (the main job's config)")
  from microworldbench.physics import score_videos  # pylint: disable=g-import-not-at-top

  train_rows, train = load_clips(c, "train")
  val_rows, val = load_clips(c, "validation")
  val_rows, val = val_rows[: a.num_clips], val[: a.num_clips]
  same = jnp.asarray([[t["process"] == v["process"] for t in train_rows] for v in val_rows])
  clips = jnp.asarray(train)
  print(f"{len(train_rows)} training clips, {len(val_rows)} validation prompts, {train.shape[1:]} each", flush=True)

  # 1. Sampling with the ideal denoiser gives back training clips that score as the ground truth does.
  samples = sample_ideal(c, clips, same, a.seed)
  dist = np.stack([np.mean(np.square(train - s), axis=(1, 2, 3, 4)) for s in samples])  # (B, N)
  nearest = np.argmin(dist, axis=1)
  gain = psnr(samples, train[nearest])
  ideal = score_videos(list(to_uint8(samples)), [train_rows[i] for i in nearest])
  truth = score_videos(list(to_uint8(train[nearest])), [train_rows[i] for i in nearest])
  result = {
    "psnr_to_nearest_train_db": float(np.mean(gain)),
    "min_psnr_db": float(np.min(gain)),
    "same_process": float(np.mean([train_rows[i]["process"] == r["process"] for i, r in zip(nearest, val_rows)])),
    "physics_pass_ideal": ideal["physics/pass_rate"],
    "physics_pass_ground_truth": truth["physics/pass_rate"],
    "steps": int(c.sample.steps),
    "sampler": c.sample.sampler,
  }
  print(
    f"ideal sampling ({c.sample.steps} {c.sample.sampler} steps, shift {c.diffusion.shift}): PSNR to the nearest "
    f"training clip {result['psnr_to_nearest_train_db']:.1f} dB (min {result['min_psnr_db']:.1f}); same process "
    f"{result['same_process']:.0%}; physics pass {result['physics_pass_ideal']:.2f} "
    f"(those training clips themselves: {result['physics_pass_ground_truth']:.2f})",
    flush=True,
  )

  # 2. x0 error per noise level on held-out clips: ideal, per-process mean, and the network.
  means = {p: train[[r["process"] == p for r in train_rows]].mean(0) for p in {r["process"] for r in train_rows}}
  blurry = np.stack([means[r["process"]] for r in val_rows])
  curves = {"ideal": [], "process_mean": [], **({"network": []} if a.workdir else {})}
  network = network_denoiser(a.workdir, val_rows) if a.workdir else None
  for k, s in enumerate(SIGMAS):
    n = np.asarray(jax.random.normal(jax.random.key(1000 + k), val.shape, jnp.float32))
    x_t = (1 - s) * val + s * n
    sig = jnp.full((len(val),), s, jnp.float32)
    curves["ideal"].append(float(np.mean(np.square(np.asarray(ideal_x0(jnp.asarray(x_t), sig, clips, same)) - val))))
    curves["process_mean"].append(float(np.mean(np.square(blurry - val))))
    if a.workdir:
      curves["network"].append(float(np.mean(np.square(network(jnp.asarray(x_t), sig) - val))))
  print("x0 MSE of held-out clips per noise level s:")
  print("| s | " + " | ".join(curves) + " |")
  print("|---" * (len(curves) + 1) + "|")
  for k, s in enumerate(SIGMAS):
    print(f"| {s} | " + " | ".join(f"{curves[name][k]:.4f}" for name in curves) + " |")
  result["sigmas"], result["x0_mse"] = list(SIGMAS), curves
  if a.plot:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
      ax.plot(SIGMAS, ys, marker="o", label=name)
    ax.set(xlabel="noise level s", ylabel="x0 MSE (held-out clips)", yscale="log", title="x0 error per noise level")
    ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(a.plot)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)
    print(f"wrote {a.plot}", flush=True)
  return result


if __name__ == "__main__":
  main()
