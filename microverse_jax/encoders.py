"""The frozen encoders, text (umT5) and video (pixel space or Wan-VAE), and the one loader of frozen models
(`frozen_module`): weights restored straight into their shardings, never as a host copy. Training, sampling and
encoding load through it.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from microverse_jax import convert, sharding
from microverse_jax.models.umt5 import UMT5Encoder, UMT5Tokenizer
from microverse_jax.models.wan_vae import WanVAE


class Encoders(nnx.Module):
  """Frozen text encoder and autoencoder. text(ids (B,L), mask) -> (B, L, D); encode/decode video."""

  def __init__(self, text_encoder: UMT5Encoder, vae: WanVAE | None):
    self.text_encoder = text_encoder
    self.vae = vae  # set once: nnx fixes an attribute's kind (data or static) at its first assignment

  def text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def encode(self, video):
    """video (B, F, H, W, 3) in [-1, 1] -> latents (B, F', H', W', C), normalised."""
    return video if self.vae is None else self.vae.normalize_latents(self.vae.encode(video))

  @property
  def temporal_factor(self) -> int:
    """Video frames per latent frame after the first (1 in pixel space)."""
    return 1 if self.vae is None else self.vae.cfg.temporal_factor

  def encode_first_frame(self, frames, num_latent_frames: int):
    """Latents (B, F', H', W', C), F' = `num_latent_frames`, of first frames (B, 1, H, W, 3) followed by zero
    frames: the image latents of a "concat" model (diffusion.concat_condition)."""
    blank = (num_latent_frames - 1) * self.temporal_factor
    return self.encode(jnp.pad(frames, ((0, 0), (0, blank), (0, 0), (0, 0), (0, 0))))

  def decode(self, latents, tiled: bool = False):
    """tiled: the Wan-VAE decodes overlapping spatial tiles one after another (bounded memory)."""
    return latents if self.vae is None else self.vae.decode(self.vae.denormalize_latents(latents), tiled=tiled)


def shardings_of(state: nnx.State, mesh, rules) -> dict:
  """Pure-dict tree of NamedShardings from each variable's logical axis names. A dimension that
  its mesh axes do not divide (e.g. a 259-token byte vocabulary over tensor=2) is replicated."""
  out: dict = {}
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get("out_sharding") or (None,) * var.ndim
    spec = sharding.logical_to_spec(names, rules)
    spec = P(*(axes if _divides(mesh, axes, dim) else None for axes, dim in zip(spec, var.shape)))
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(mesh, spec)
  return out


def _divides(mesh, axes, dim: int) -> bool:
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return dim % size == 0


def frozen_module(cls, cfg, *, init_from: str, kind: str, seed: int, mesh, rules, name: str, dtype=None):
  """`cls(cfg)` with weights restored from `init_from` (converted or PyTorch) straight into their
  shardings, floating-point ones as `dtype` if given, or a seeded random init made sharded (said on
  stdout: never silently random). The one loader of frozen models: training, sampling and encoding."""
  abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(seed)))
  graphdef, state = nnx.split(abstract)
  shard = shardings_of(state, mesh, rules)
  if init_from:

    def leaf(s, sh):
      floating = dtype is not None and jnp.issubdtype(s.dtype, jnp.floating)
      return jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype) if floating else s.dtype, sharding=sh)

    target = jax.tree.map(leaf, state.to_pure_dict(), shard)
    pure = convert.restore_params(init_from, target, kind=kind)
  else:
    print(f"{name}: seeded random weights (seed {seed}); set its init_from for real ones", flush=True)
    pure = jax.jit(lambda: nnx.state(cls(cfg, rngs=nnx.Rngs(seed))).to_pure_dict(), out_shardings=shard)()
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


# text.tokenizer values that need no tokenizer files, by name -> "module:class" (a class taking max_length):
# UTF-8 bytes, and the procedural captions read back into process and parameter tokens (docs/physics.md).
OFFLINE_TOKENIZERS = {
  "bytes": "microverse_jax.input_pipeline:ByteTokenizer",
  "microsim_params": "microverse_jax.datasets.microsim_synth.conditioning:ParamTokenizer",
}


def build_tokenizer(c):
  """text.tokenizer: a name in OFFLINE_TOKENIZERS, or a sentencepiece / tokenizer.json path."""
  if c.text.tokenizer in OFFLINE_TOKENIZERS:
    module, _, name = OFFLINE_TOKENIZERS[c.text.tokenizer].partition(":")
    return getattr(importlib.import_module(module), name)(c.text.max_length)
  return UMT5Tokenizer(c.text.tokenizer, max_length=c.text.max_length)


def build_encoders(plan, mesh) -> tuple[object, Encoders]:
  """(tokenizer, Encoders) of a `plans.Plan`: umT5 sharded by the rules (embed over fsdp, heads/mlp over tensor),
  the VAE replicated; weights from text.init_from / autoencoder.init_from, else seeded random."""
  c, rules = plan.c, plan.rules
  if plan.text.d_model != plan.dit.text_dim:  # before any weights load
    raise ValueError(f"model.text_dim={plan.dit.text_dim}, but the text encoder gives {plan.text.d_model}")
  seed = c.train.seed + 1
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    text = frozen_module(
      UMT5Encoder,
      plan.text,
      init_from=c.text.init_from,
      kind="umt5",
      seed=seed,
      mesh=mesh,
      rules=rules,
      name="text encoder",
    )
    vae = (
      None
      if plan.vae is None
      else frozen_module(
        WanVAE,
        plan.vae,
        init_from=c.autoencoder.init_from,
        kind="vae",
        seed=seed,
        mesh=mesh,
        rules=rules,
        name="Wan-VAE",
      )
    )
  return build_tokenizer(c), Encoders(text, vae)


def abstract_encoders(plan, mesh) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, state of ShapeDtypeStructs with shardings) of a plan's encoders, for AOT compiles."""
  seed = plan.c.train.seed + 1
  enc = nnx.eval_shape(
    lambda: Encoders(
      UMT5Encoder(plan.text, rngs=nnx.Rngs(seed)),
      None if plan.vae is None else WanVAE(plan.vae, rngs=nnx.Rngs(seed)),
    )
  )
  graphdef, state = nnx.split(enc)
  shard = shardings_of(state, mesh, plan.rules)
  pure = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state.to_pure_dict(), shard)
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state
