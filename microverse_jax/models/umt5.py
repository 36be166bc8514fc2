"""The umT5 text encoder (as Wan2.1 uses umt5-xxl) in Flax NNX, and its tokenizer.

Axis letters: B batch, L text tokens, N heads, D head dim (d_kv), E model width (d_model), M FFN width.

  ids (B, L) int, mask (B, L) bool
    --token embedding--> (B, L, E)
    --num_layers x [x += attn(rmsnorm(x)) with a per-layer relative position bias (no 1/sqrt(D));
                    x += wo(gelu_tanh(wi_0(rmsnorm(x))) * wi_1(rmsnorm(x)))]  (scanned, 'layers')
    --rmsnorm--> (B, L, E) fp32, padded positions set to zero (what the Wan DiT attends to).

RMSNorm has no mean subtraction and no bias. Parameters are sharded two ways: the model width E
is 'embed' (FSDP) and heads / FFN width are 'heads' / 'mlp' (tensor), the vocabulary 'vocab', so
umt5-xxl (5.7B parameters, 23 GB fp32) never needs one device's whole memory: build it with
`nnx.eval_shape` and restore each device's shard (see README).
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax import sharding
from microverse_jax.models.layers import Dense, RMSNorm, param


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  vocab_size: int = 256384
  d_model: int = 4096
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  d_kv: int = 64
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  max_length: int = 512  # tokens per prompt (Wan pads / truncates to 512)
  dtype: str = "float32"  # compute dtype; parameters stay fp32, norms and softmax compute in fp32

  @classmethod
  def preset(cls, name: str, **overrides) -> "UMT5Config":
    """Named sizes: "umt5-xxl" (Wan2.1's text encoder) or "tiny" (CPU tests)."""
    presets = {
      "umt5-xxl": {},
      "tiny": dict(
        vocab_size=128,
        d_model=32,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        d_kv=8,
        num_buckets=8,
        max_distance=16,
        max_length=16,
      ),
    }
    if name.lower() not in presets:
      raise ValueError(f"unknown UMT5 preset {name!r}; expected one of {sorted(presets)}")
    return cls(**{**presets[name.lower()], **overrides})


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """(L, L) bidirectional T5 bucket of (key position - query position), computed on the host.

  Half the buckets are for keys after the query; within each half, distances below
  num_buckets/4 get their own bucket and larger ones share log-spaced buckets up to `max_distance`.
  The float32 arithmetic mirrors the PyTorch references so bucket edges agree exactly.
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    scaled = (
      np.log(rel.astype(np.float32) / np.float32(max_exact))
      / np.float32(math.log(max_distance / max_exact))
      * np.float32(half - max_exact)
    )
  large = np.minimum(max_exact + np.where(rel < max_exact, 0, scaled).astype(np.int64), half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class UMT5Block(nnx.Module):
  """Pre-norm self-attention with its own relative position bias, then a gated-GELU FFN."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    e, h, dt = cfg.d_model, cfg.num_heads * cfg.d_kv, jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.norm1 = RMSNorm(e, ("embed",), rngs=rngs, eps=cfg.eps)
    self.q = Dense(e, h, ("embed", "heads"), rngs=rngs, use_bias=False, dtype=dt)
    self.k = Dense(e, h, ("embed", "heads"), rngs=rngs, use_bias=False, dtype=dt)
    self.v = Dense(e, h, ("embed", "heads"), rngs=rngs, use_bias=False, dtype=dt)
    self.o = Dense(h, e, ("heads", "embed"), rngs=rngs, use_bias=False, dtype=dt)
    self.relative_bias = param(rngs, nnx.initializers.normal(1.0), (cfg.num_buckets, cfg.num_heads), (None, "heads"))
    self.norm2 = RMSNorm(e, ("embed",), rngs=rngs, eps=cfg.eps)
    self.wi_0 = Dense(e, cfg.d_ff, ("embed", "mlp"), rngs=rngs, use_bias=False, dtype=dt)
    self.wi_1 = Dense(e, cfg.d_ff, ("embed", "mlp"), rngs=rngs, use_bias=False, dtype=dt)
    self.wo = Dense(cfg.d_ff, e, ("mlp", "embed"), rngs=rngs, use_bias=False, dtype=dt)

  def __call__(self, x, buckets, mask):
    """x (B, L, E); buckets (L, L) int; mask (B, L) bool -> (B, L, E)."""
    cfg = self.cfg
    b, l, _ = x.shape
    h = self.norm1(x)
    q, k, v = (f(h).reshape(b, l, cfg.num_heads, cfg.d_kv) for f in (self.q, self.k, self.v))
    bias = jnp.take(self.relative_bias[...], buckets, axis=0).transpose(2, 0, 1)  # (N, L, L)
    logits = jnp.einsum("blnd,bmnd->bnlm", q, k, preferred_element_type=jnp.float32) + bias
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    attn = jnp.einsum("bnlm,bmnd->blnd", probs, v).reshape(b, l, cfg.num_heads * cfg.d_kv)
    x = x + self.o(attn).astype(x.dtype)
    h = self.norm2(x)
    x = x + self.wo(jax.nn.gelu(self.wi_0(h), approximate=True) * self.wi_1(h)).astype(x.dtype)
    return sharding.constrain(x, ("batch", "text_tokens", "embed"))


class UMT5Encoder(nnx.Module):
  """encoder(ids (B, L) int, mask (B, L) bool) -> (B, L, E) fp32 with padded positions zeroed."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    with nnx.use_eager_sharding(False):  # shardings are applied by jit / restore (see README)
      self.token_embedding = param(
        rngs, nnx.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model), ("vocab", "embed")
      )

      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(rngs):
        return UMT5Block(cfg, rngs=rngs)

      self.blocks = make_blocks(rngs)
      self.final_norm = RMSNorm(cfg.d_model, ("embed",), rngs=rngs, eps=cfg.eps)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.cfg
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"UMT5Encoder: expected ids and mask of one shape (B, L), got {ids.shape}, {mask.shape}")
    mask = mask.astype(bool)
    x = jnp.take(self.token_embedding[...], ids, axis=0).astype(jnp.dtype(cfg.dtype))
    x = sharding.constrain(x, ("batch", "text_tokens", "embed"))
    buckets = jnp.asarray(relative_position_buckets(ids.shape[1], cfg.num_buckets, cfg.max_distance))
    graphdef, block_state = nnx.split(self.blocks)

    def body(carry, layer_state):
      return nnx.merge(graphdef, layer_state)(carry, buckets, mask), None

    x, _ = jax.lax.scan(body, x, block_state)
    out = self.final_norm(x).astype(jnp.float32) * mask[..., None]
    return sharding.constrain(out, ("batch", "text_tokens", "text_embed"))


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
class UMT5Tokenizer:
  """Text -> (ids int32 (n, L), mask bool (n, L)), padded / truncated to `max_length` with `</s>` kept.

  Loads from a local directory only: `tokenizer.json` (HF tokenizers) or else `spiece.model`
  (sentencepiece). Prompts are cleaned as Wan does (HTML unescaped, whitespace collapsed).
  Picklable: the backend is reloaded from `path` in each process.
  """

  def __init__(self, path: str, max_length: int = 512):
    self.path, self.max_length = os.path.abspath(path), int(max_length)
    candidates = [os.path.join(self.path, n) for n in ("tokenizer.json", "spiece.model")]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
      raise FileNotFoundError(
        f"no umT5 tokenizer in {self.path}: expected tokenizer.json or spiece.model "
        "(e.g. the tokenizer files of google/umt5-xxl, downloaded beforehand)"
      )
    self.file = found[0]
    self._backend = None

  def __getstate__(self):
    return {**self.__dict__, "_backend": None}

  def _load(self):
    if self._backend is None:
      if self.file.endswith(".json"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(self.file)
        tok.enable_truncation(self.max_length)
        tok.no_padding()
        self._backend = tok
      else:
        import sentencepiece

        self._backend = sentencepiece.SentencePieceProcessor(model_file=self.file)
    return self._backend

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError("UMT5Tokenizer expects a list of strings, got one string")
    texts = [re.sub(r"\s+", " ", html.unescape(html.unescape(t))).strip() for t in texts]
    backend = self._load()
    if self.file.endswith(".json"):
      seqs, pad = [e.ids for e in backend.encode_batch(texts)], backend.token_to_id("<pad>") or 0
    else:
      eos, pad = backend.eos_id(), max(backend.pad_id(), 0)
      seqs = [s[: self.max_length - 1] + [eos] for s in backend.encode(texts)]
    ids = np.full((len(texts), self.max_length), pad, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, s in enumerate(seqs):
      ids[i, : len(s)], mask[i, : len(s)] = s, True
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Weight import: transformers UMT5EncoderModel and the original models_t5_umt5-xxl-enc-bf16.pth
# ---------------------------------------------------------------------------------------------
# (ours, transformers key under encoder.block.{i}., original key under blocks.{i}., transposed)
_LAYER_KEYS = (
  ("norm1.scale", "layer.0.layer_norm.weight", "norm1.weight", False),
  ("q.kernel", "layer.0.SelfAttention.q.weight", "attn.q.weight", True),
  ("k.kernel", "layer.0.SelfAttention.k.weight", "attn.k.weight", True),
  ("v.kernel", "layer.0.SelfAttention.v.weight", "attn.v.weight", True),
  ("o.kernel", "layer.0.SelfAttention.o.weight", "attn.o.weight", True),
  ("relative_bias", "layer.0.SelfAttention.relative_attention_bias.weight", "pos_embedding.embedding.weight", False),
  ("norm2.scale", "layer.1.layer_norm.weight", "norm2.weight", False),
  ("wi_0.kernel", "layer.1.DenseReluDense.wi_0.weight", "ffn.gate.0.weight", True),
  ("wi_1.kernel", "layer.1.DenseReluDense.wi_1.weight", "ffn.fc1.weight", True),
  ("wo.kernel", "layer.1.DenseReluDense.wo.weight", "ffn.fc2.weight", True),
)


def umt5_config_from_transformers(cfg: dict, **overrides) -> UMT5Config:
  """Our config from a transformers UMT5Config config.json."""
  if cfg.get("model_type", "umt5") != "umt5":
    raise ValueError(
      f"config.json: model_type={cfg.get('model_type')!r}; expected 'umt5' (T5 shares one "
      "position bias across layers and is not supported)"
    )
  if cfg.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
    raise ValueError(f"config.json: feed_forward_proj={cfg['feed_forward_proj']!r}; expected 'gated-gelu'")
  fields = {
    ours: cfg[theirs]
    for ours, theirs in (
      ("vocab_size", "vocab_size"),
      ("d_model", "d_model"),
      ("d_ff", "d_ff"),
      ("num_layers", "num_layers"),
      ("num_heads", "num_heads"),
      ("d_kv", "d_kv"),
      ("num_buckets", "relative_attention_num_buckets"),
      ("max_distance", "relative_attention_max_distance"),
      ("eps", "layer_norm_epsilon"),
    )
    if theirs in cfg
  }
  return UMT5Config(**{**fields, **overrides})


def umt5_config_from_original(sd, **overrides) -> UMT5Config:
  """Infers the config of an original Wan `T5Encoder` state dict from its shapes (max_distance 128)."""
  for key in (
    "token_embedding.weight",
    "blocks.0.attn.q.weight",
    "blocks.0.ffn.fc1.weight",
    "blocks.0.pos_embedding.embedding.weight",
  ):
    if key not in sd:
      raise ValueError(f"original umT5 checkpoint: missing key {key!r}")
  vocab, d_model = sd["token_embedding.weight"].shape
  num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
  num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  fields = dict(
    vocab_size=vocab,
    d_model=d_model,
    d_ff=sd["blocks.0.ffn.fc1.weight"].shape[0],
    num_layers=num_layers,
    num_heads=num_heads,
    num_buckets=num_buckets,
    d_kv=sd["blocks.0.attn.q.weight"].shape[0] // num_heads,
  )
  return UMT5Config(**{**fields, **overrides})


def umt5_arrays(sd, num_layers: int, layout: str = "transformers") -> dict[str, np.ndarray]:
  """Torch-layout tensors (`layout`: "transformers" or "original") -> our dotted paths.

  Linear weights (out, in) become kernels (in, out); per-layer tensors are stacked on a leading
  'layers' axis. A missing key raises KeyError (named); leftover keys raise ValueError listing them.
  """
  if layout not in ("transformers", "original"):
    raise ValueError(f"layout={layout!r}; expected 'transformers' or 'original'")
  used = set()

  def take(key, transpose=False):
    used.add(key)
    a = np.asarray(sd[key])
    return a.T if transpose else a

  if layout == "transformers":
    embed = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
    used.update(k for k in ("shared.weight", "encoder.embed_tokens.weight") if k in sd)
    out = {"token_embedding": take(embed), "final_norm.scale": take("encoder.final_layer_norm.weight")}
    prefix = "encoder.block.{}."
  else:
    out = {"token_embedding": take("token_embedding.weight"), "final_norm.scale": take("norm.weight")}
    prefix = "blocks.{}."
  for ours, hf, orig, transpose in _LAYER_KEYS:
    name = hf if layout == "transformers" else orig
    out[f"blocks.{ours}"] = np.stack([take(prefix.format(i) + name, transpose) for i in range(num_layers)])
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(
      f"umT5 checkpoint ({layout} layout): unexpected keys {leftover[:20]}"
      f"{' ...' if len(leftover) > 20 else ''} (is num_layers={num_layers} right?)"
    )
  return out
