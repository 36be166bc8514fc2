"""Flow matching as Wan2.1 / MicroVerse train it, and the samplers that invert it.

Noise level sigma in [0, 1]: x_sigma = (1 - sigma) * x0 + sigma * noise; the model predicts the
velocity v = noise - x0 at timestep t = 1000 * sigma. Sigmas are shifted towards noise:
sigma' = s * sigma / (1 + (s - 1) * sigma).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
# Loss weightings over noise levels (shared/notes/diffusion-objectives.md). The loss is the velocity MSE, which is
# the x0 MSE times 1 / sigma^2; each weighting is given as the x0-space weight it implies:
#   "wan": the recipe's bump exp(-2 ((t - 500) / 1000)^2) minus its minimum (times 1 / sigma^2): fine-tuning Wan
#   "uniform": 1 / sigma^2 (the plain velocity loss, as SD3)
#   "snr+1": SNR + 1 with SNR = ((1 - sigma) / sigma)^2 (v-prediction's weight: bounded below by 1 at high noise)
#   "min_snr": min(SNR, 5) (min-SNR-gamma, Hang et al. 2023, gamma 5)
#   "edm": (s^2 + 0.5^2) / (s 0.5)^2 at EDM's s = sigma / (1 - sigma), data std 0.5 (Karras et al. 2022)
WEIGHTINGS = ("wan", "uniform", "snr+1", "min_snr", "edm")
MIN_SNR_GAMMA, EDM_SIGMA_DATA = 5.0, 0.5
# How training draws a noise level: "uniform" over the grid, or "logit_normal" (SD3: the unshifted sigma is
# sigmoid(z), z ~ N(0, 1), then shifted as the grid is; mid noise is drawn most).
SIGMA_SAMPLINGS = ("uniform", "logit_normal")
# Which timesteps a run trains (Wan2.2 A14B's two experts, split at 1000 diffusion.boundary_ratio): "" all, "high"
# those >= the boundary (diffusers WanPipeline's `transformer`), "low" those below (its `transformer_2`).
EXPERTS = ("", "high", "low")


def shift_sigmas(sigmas, shift: float):
  return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """The training grid: sigma = shift(linspace(1, 0, 1001)[:-1]), t = 1000 sigma, loss weights w(t).

  `prediction`: what the model outputs ("velocity" or "x0", see `to_velocity`). `weighting`: one of WEIGHTINGS
  ("wan", the recipe's bump, zero at both ends, is for fine-tuning a model that can already draw; the others keep
  high noise, where a model trained from scratch learns the composition). `sigma_sampling`: SIGMA_SAMPLINGS."""

  shift: float = 5.0
  prediction: str = "velocity"
  weighting: str = "wan"
  sigma_sampling: str = "uniform"

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"diffusion.weighting={self.weighting!r}: expected one of {WEIGHTINGS}")
    if self.sigma_sampling not in SIGMA_SAMPLINGS:
      raise ValueError(f"diffusion.sigma_sampling={self.sigma_sampling!r}: expected one of {SIGMA_SAMPLINGS}")

  @classmethod
  def from_config(cls, d) -> "FlowMatching":
    """From a config's `diffusion` block (shift, prediction, weighting, sigma_sampling)."""
    return cls(shift=d.shift, prediction=d.prediction, weighting=d.weighting, sigma_sampling=d.sigma_sampling)

  @property
  def sigmas(self) -> np.ndarray:
    return shift_sigmas(np.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1], self.shift).astype(np.float32)

  @property
  def timesteps(self) -> np.ndarray:
    return self.sigmas * NUM_TRAIN_TIMESTEPS

  @property
  def loss_weights(self) -> np.ndarray:
    """The velocity loss's weight at each grid point (the x0-space weight of WEIGHTINGS times sigma^2).
    "wan" is normalised to mean 1 over the grid; "uniform" is 1."""
    if self.weighting == "wan":
      t = self.timesteps.astype(np.float64)
      y = np.exp(-2 * ((t - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
      y = y - y.min()
      return (y * (len(y) / y.sum())).astype(np.float32)
    s = self.sigmas.astype(np.float64)
    if self.weighting == "uniform":
      return np.ones_like(s, np.float32)
    snr = np.square((1 - s) / s)  # the grid's sigma is > 0 and at most 1
    edm = np.square(s / np.maximum(1 - s, 1e-6))  # EDM's noise level, squared
    x0_weight = {
      "snr+1": snr + 1,
      "min_snr": np.minimum(snr, MIN_SNR_GAMMA),
      "edm": (edm + EDM_SIGMA_DATA**2) / (np.maximum(edm, 1e-12) * EDM_SIGMA_DATA**2),
    }[self.weighting]
    return (x0_weight * np.square(s)).astype(np.float32)

  def training_inputs(self, x0: jax.Array, noise: jax.Array, index: jax.Array):
    """Noisy input, timestep, velocity target and loss weight for grid indices `index` (B,).

    x0, noise: (B, ...). Returns x_t (like x0), t (B,), target (like x0, fp32), weight (B,).
    """
    x_t, t, target = self.noised(x0, noise, jnp.asarray(self.sigmas)[index])
    return x_t, t, target, jnp.asarray(self.loss_weights)[index]

  @staticmethod
  def noised(x0: jax.Array, noise: jax.Array, sigma: jax.Array):
    """Noisy input, timestep t = 1000 sigma and velocity target at noise levels `sigma` (B,)."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - s) * x0 + s * noise
    return x_t, sigma * NUM_TRAIN_TIMESTEPS, (noise - x0).astype(jnp.float32)

  def velocity(self, out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The velocity of model output `out` at timesteps t (B,), the x0 denominator clipped at 0.05."""
    return to_velocity(out, x_t, t / NUM_TRAIN_TIMESTEPS, self.prediction, min_sigma=0.05)

  def expert_indices(self, boundary_ratio: float, expert: str) -> tuple[int, int]:
    """The grid indices [lo, hi) an expert (EXPERTS) trains: "high" those of timesteps t >= 1000 boundary_ratio
    (compared in float32, as sampling switches, `switched`), "low" those below, "" all."""
    if not expert:
      return 0, NUM_TRAIN_TIMESTEPS
    high = int(np.sum(self.timesteps >= np.float32(boundary_ratio * NUM_TRAIN_TIMESTEPS)))  # t falls along the grid
    return (0, high) if expert == "high" else (high, NUM_TRAIN_TIMESTEPS)

  def sample_index(self, key, batch: int, lo: int = 0, hi: int = NUM_TRAIN_TIMESTEPS) -> jax.Array:
    """One grid index per sample, (B,) int32 in [lo, hi) (`expert_indices`; default all): uniform, or at the
    unshifted sigma sigmoid(z), z normal (truncated to the z whose index is in [lo, hi))."""
    if self.sigma_sampling == "uniform":
      return jax.random.randint(key, (batch,), lo, hi)
    if (lo, hi) == (0, NUM_TRAIN_TIMESTEPS):
      z = jax.random.normal(key, (batch,))
    else:  # index i = floor((1 - sigma) 1000) lies in [lo, hi) for sigma in (1 - hi / 1000, 1 - lo / 1000]
      logit = lambda p: -np.inf if p <= 0 else np.inf if p >= 1 else float(np.log(p / (1 - p)))
      bounds = logit(1 - hi / NUM_TRAIN_TIMESTEPS), logit(1 - lo / NUM_TRAIN_TIMESTEPS)
      z = jax.random.truncated_normal(key, *bounds, (batch,))
    sigma = jax.nn.sigmoid(z)  # grid point i is the unshifted sigma 1 - i / 1000
    return jnp.clip(jnp.floor((1 - sigma) * NUM_TRAIN_TIMESTEPS), lo, hi - 1).astype(jnp.int32)


def inference_sigmas(num_steps: int, shift: float = 5.0) -> np.ndarray:
  """num_steps + 1 shifted sigmas from 1 down to 0 (the last is exactly 0)."""
  return shift_sigmas(np.linspace(1.0, 0.0, num_steps + 1), shift).astype(np.float64)


PREDICTIONS = ("velocity", "x0")
# How a model takes a conditioning image (docs/sampling.md): "none" (text-to-video only); "ti2v" (Wan2.2 TI2V:
# latent frame 0 is the clean image latent, with timestep 0 on its tokens); "concat" (Wan2.2 I2V-A14B style:
# a frame mask and the latents of the image followed by blank frames are concatenated to the input channels).
IMAGE_CONDITIONING = ("none", "ti2v", "concat")


def image_conditioning(d) -> str:
  """A config's `diffusion.image_conditioning`, checked."""
  mode = d.image_conditioning
  if mode not in IMAGE_CONDITIONING:
    raise ValueError(f"diffusion.image_conditioning={mode!r}: expected one of {IMAGE_CONDITIONING}")
  return mode


def model_in_channels(mode: str, channels: int, temporal_factor: int) -> int:
  """The DiT's input channels for latents of `channels`: "concat" adds the frame mask (one channel per video
  frame a latent frame holds: the autoencoder's temporal factor) and the image's latents."""
  return 2 * channels + temporal_factor if mode == "concat" else channels


def first_frame_tokens(latent_shape, patch_size) -> jax.Array:
  """(T,) float32 over the DiT's tokens of latents (F', H', W', ...) and `patch_size` (1, ph, pw): 0 on latent
  frame 0's tokens, 1 elsewhere. "ti2v": the per-token timestep is t times it (frame 0 is clean)."""
  grid = [n // p for n, p in zip(latent_shape[:3], patch_size)]
  return (jnp.arange(math.prod(grid)) >= grid[1] * grid[2]).astype(jnp.float32)


def concat_condition(image_latents: jax.Array, temporal_factor: int) -> jax.Array:
  """The "concat" DiT's extra input channels (B, F', H', W', t + C): a frame mask of t = `temporal_factor`
  channels (one per video frame a latent frame holds), 1 on latent frame 0 and 0 elsewhere, then `image_latents`
  (B, F', H', W', C), those of the first frame followed by blank frames (`Encoders.encode_first_frame`)."""
  mask = jnp.zeros((*image_latents.shape[:-1], temporal_factor), jnp.float32).at[:, 0].set(1.0)
  return jnp.concatenate([mask, image_latents.astype(jnp.float32)], axis=-1)


def to_velocity(out: jax.Array, x_t: jax.Array, sigma: jax.Array, prediction: str, min_sigma: float = 0.0) -> jax.Array:
  """The velocity a model output stands for. out, x_t: (B, ...); sigma: (B,).

  "velocity": out is v (Wan2.1). "x0": out is the clean sample, v = (x_t - out) / sigma, the
  denominator clipped at `min_sigma` (training uses 0.05 so the loss stays bounded near sigma = 0).
  Predicting x0 and training on the velocity loss suits small pixel-space models: the noise
  never has to pass through the network (Li & He 2025, "Back to Basics: Let Denoising Generative
  Models Denoise").
  """
  if prediction == "velocity":
    return out
  if prediction != "x0":
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
  s = jnp.maximum(sigma, min_sigma).reshape(-1, *([1] * (x_t.ndim - 1)))
  return (x_t.astype(jnp.float32) - out.astype(jnp.float32)) / s


VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x, t (B,)) -> v


def guided(velocity: Callable, guidance: float, *, cond_only: Callable | None = None) -> Callable:
  """Classifier-free guidance for a model run on [cond; uncond] stacked on the batch axis.

  velocity(x2 (2B, ...), t2 (2B,)) -> v2; returns v_uncond + guidance * (v_cond - v_uncond).
  CFG cache: with `cond_only(x (B, ...), t (B,)) -> v_cond`, every other call runs the conditional
  pass alone and reuses the guidance term v_cond - v_uncond of the call before (off when None).
  """
  state = {"calls": 0, "delta": None}

  def fn(x, t):
    reuse = cond_only is not None and state["calls"] % 2 == 1
    state["calls"] += 1
    if reuse:
      return cond_only(x, t) + (guidance - 1.0) * state["delta"]
    v = velocity(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    v_cond, v_uncond = jnp.split(v, 2)
    state["delta"] = v_cond - v_uncond
    return v_uncond + guidance * state["delta"]

  return fn


def switched(high: Callable, low: Callable, boundary: float) -> Callable:
  """Two experts (Wan2.2 A14B): velocity(x, t (B,)) is `high`'s while t >= boundary (a timestep in 0..1000,
  compared in float32 as diffusers does), `low`'s below."""
  return lambda x, t: high(x, t) if np.float32(t[0]) >= np.float32(boundary) else low(x, t)


def sample(
  velocity: VelocityFn,
  noise: jax.Array,
  num_steps: int,
  *,
  shift: float = 5.0,
  sampler: str = "euler",
  callback: Callable[[int], None] | None = None,
  step_cache: float = 0.0,
  stats: dict | None = None,
  first_frame: jax.Array | None = None,
) -> jax.Array:
  """Integrates dx/dsigma = v from sigma = 1 (noise) to 0 and returns x0.

  velocity(x, t) is called once per step with t = 1000 sigma broadcast to (B,).
  sampler: "euler" (x += v (sigma_next - sigma)) or "unipc" (UniPC, order 2, bh2, data prediction).
  step_cache: a step reuses the last velocity instead of calling the model while the input has
  moved less than this relative L1 distance since the last call (TeaCache-style; 0 = off). The
  first and last steps always call the model. `stats`, if given, gets "model_calls".
  first_frame: clean latents (B, 1, H, W, C) that frame 0 of x (B, F, H, W, C) is held at, set before the
  first step and after every step (Wan2.2 TI2V's image conditioning; the solvers act elementwise, so the
  other frames are as if frame 0 were only replaced in the model's input).
  """
  if sampler not in ("euler", "unipc"):
    raise ValueError(f"sampler={sampler!r}: expected 'euler' or 'unipc'")
  sigmas = inference_sigmas(num_steps, shift)
  hold = (lambda x: x) if first_frame is None else (lambda x: x.at[:, :1].set(first_frame.astype(jnp.float32)))
  x = hold(noise.astype(jnp.float32))
  batch = x.shape[0]
  history: list[tuple[float, jax.Array]] = []  # (lambda, x0 prediction) of past steps
  last_x = None
  v, x_called, calls = None, None, 0
  for i in range(num_steps):
    s, s_next = sigmas[i], sigmas[i + 1]
    if not (step_cache > 0 and 0 < i < num_steps - 1 and _moved(x, x_called) < step_cache):
      v = velocity(x, jnp.full((batch,), s * NUM_TRAIN_TIMESTEPS, jnp.float32)).astype(jnp.float32)
      x_called, calls = x, calls + 1
    if sampler == "euler":
      x = x + v * (s_next - s)
    else:
      x0 = x - s * v
      if history:  # UniC corrector for the step just taken, using the fresh prediction at x
        x = _unipc_update(last_x, sigmas[i - 1], s, history, x0_new=x0)
      history = (history + [(_lam(s), x0)])[-2:]
      last_x = x
      x = x0 if s_next == 0 else _unipc_update(x, s, s_next, history)
    x = hold(x)
    if callback is not None:
      callback(i)
  if stats is not None:
    stats["model_calls"] = calls
  return x


def _moved(x: jax.Array, ref: jax.Array) -> float:
  """Relative L1 distance of x from ref."""
  return float(jnp.mean(jnp.abs(x - ref)) / (jnp.mean(jnp.abs(ref)) + 1e-8))


def _lam(sigma: float) -> float:
  """log(alpha / sigma) with alpha = 1 - sigma. Pure noise (sigma 1) counts as 1 - 1e-6, as diffusers'
  UniPC does: a finite lambda keeps the second-order terms of the first updates."""
  sigma = min(sigma, 1 - 1e-6)
  return float(np.log(1 - sigma) - np.log(sigma)) if sigma > 0 else np.inf


def _unipc_update(x, s, t, history, x0_new=None):
  """One UniPC (bh2) step from noise level s to t in data prediction form.

  history: [(lambda, x0_pred)], the last entry at s. Predictor when `x0_new` is None, otherwise the
  corrector that also uses x0_new, the prediction at t.
  """
  lam_s, m0 = history[-1]
  alpha_t, sigma_t = 1 - t, t
  h = _lam(t) - lam_s
  hh = -h
  h_phi_1 = np.expm1(hh)
  b_h = np.expm1(hh)
  x_t = (sigma_t / s) * x - alpha_t * h_phi_1 * m0
  prev = history[:-1]
  if x0_new is None:
    if prev:  # order 2 predictor, rho = 1/2
      lam_p, m_p = prev[-1]
      r1 = (lam_p - lam_s) / h
      x_t = x_t - alpha_t * b_h * 0.5 * (m_p - m0) / r1
    return x_t
  d1_t = x0_new - m0
  if not prev:  # order 1 corrector
    return x_t - alpha_t * b_h * 0.5 * d1_t
  lam_p, m_p = prev[-1]
  r1 = (lam_p - lam_s) / h
  rks = np.array([r1, 1.0])
  h_phi_k, fact, rhs, rows = h_phi_1 / hh - 1, 1, [], []
  for k in (1, 2):
    rows.append(rks ** (k - 1))
    rhs.append(h_phi_k * fact / b_h)
    fact *= k + 1
    h_phi_k = h_phi_k / hh - 1 / fact
  rho = np.linalg.solve(np.stack(rows), np.array(rhs))
  return x_t - alpha_t * b_h * (rho[0] * (m_p - m0) / r1 + rho[1] * d1_t)
