"""The Wan DiT's PyTorch names, one table read both ways: import (convert.py) and export (export.py, LoRA files).

Three namings: ours (dotted nnx paths, the blocks stacked on a leading layer axis), diffusers
(`WanTransformer3DModel`: state dict and config.json) and the original Wan2.1 release / DiffSynth
(`blocks.0.self_attn.q.weight`, `head.head.weight`; prefixes `model.diffusion_model.`, `pipe.dit.` allowed).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from microverse_jax.models.wan_dit import WanDiTConfig

# (our module, diffusers module, original Wan module, kind) at the top level. The kind says which tensors a
# module holds and how they map: linear: weight (out, in), bias <-> kernel (in, out), bias; patch: Conv3d
# weight (E, C, pt, ph, pw), bias <-> kernel (pt*ph*pw*C, E), bias; scale: weight <-> scale (RMSNorm);
# norm: weight, bias <-> scale, bias (affine LayerNorm); table: (1, n, E) <-> (n, E) (adaLN modulation).
TOP_KEYS = (
  ("patch_embed", "patch_embedding", "patch_embedding", "patch"),
  ("time_embed_1", "condition_embedder.time_embedder.linear_1", "time_embedding.0", "linear"),
  ("time_embed_2", "condition_embedder.time_embedder.linear_2", "time_embedding.2", "linear"),
  ("time_proj", "condition_embedder.time_proj", "time_projection.1", "linear"),
  ("text_embed_1", "condition_embedder.text_embedder.linear_1", "text_embedding.0", "linear"),
  ("text_embed_2", "condition_embedder.text_embedder.linear_2", "text_embedding.2", "linear"),
  ("head", "proj_out", "head.head", "linear"),
  ("head_modulation", "scale_shift_table", "head.modulation", "table"),
)
# The same for each block: under `blocks.{i}.` in PyTorch, stacked under `blocks.` in ours. norm2, the
# cross-attention norm (the original release's norm3), exists only with cross_attn_norm.
BLOCK_KEYS = (
  ("self_attn.q", "attn1.to_q", "self_attn.q", "linear"),
  ("self_attn.k", "attn1.to_k", "self_attn.k", "linear"),
  ("self_attn.v", "attn1.to_v", "self_attn.v", "linear"),
  ("self_attn.o", "attn1.to_out.0", "self_attn.o", "linear"),
  ("self_attn.norm_q", "attn1.norm_q", "self_attn.norm_q", "scale"),
  ("self_attn.norm_k", "attn1.norm_k", "self_attn.norm_k", "scale"),
  ("cross_attn.q", "attn2.to_q", "cross_attn.q", "linear"),
  ("cross_attn.k", "attn2.to_k", "cross_attn.k", "linear"),
  ("cross_attn.v", "attn2.to_v", "cross_attn.v", "linear"),
  ("cross_attn.o", "attn2.to_out.0", "cross_attn.o", "linear"),
  ("cross_attn.norm_q", "attn2.norm_q", "cross_attn.norm_q", "scale"),
  ("cross_attn.norm_k", "attn2.norm_k", "cross_attn.norm_k", "scale"),
  ("norm2", "norm2", "norm3", "norm"),
  ("ffn_in", "ffn.net.0.proj", "ffn.0", "linear"),
  ("ffn_out", "ffn.net.2", "ffn.2", "linear"),
  ("modulation", "scale_shift_table", "modulation", "table"),
)
# kind -> (PyTorch tensor, our parameter) pairs of one module; None: the module is the tensor.
_TENSORS = {
  "linear": (("weight", "kernel"), ("bias", "bias")),
  "patch": (("weight", "kernel"), ("bias", "bias")),
  "scale": (("weight", "scale"),),
  "norm": (("weight", "scale"), ("bias", "bias")),
  "table": ((None, None),),
}
LAYOUTS = ("diffusers", "original")  # the PyTorch namings: columns 1 and 2 of the tables
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "pipe.dit.", "transformer.")

# (our WanDiTConfig field, diffusers config.json key) in the order export writes them; None: a field of the
# image-conditioned Wan models, written null and refused on import.
CONFIG_KEYS = (
  ("patch_size", "patch_size"),
  ("num_heads", "num_attention_heads"),
  ("head_dim", "attention_head_dim"),
  ("in_channels", "in_channels"),
  ("out_channels", "out_channels"),
  ("text_dim", "text_dim"),
  ("freq_dim", "freq_dim"),
  ("ffn_dim", "ffn_dim"),
  ("num_layers", "num_layers"),
  ("cross_attn_norm", "cross_attn_norm"),
  ("qk_norm", "qk_norm"),
  ("eps", "eps"),
  (None, "image_dim"),
  (None, "added_kv_proj_dim"),
  ("rope_max_seq_len", "rope_max_seq_len"),
  (None, "pos_embed_seq_len"),
)
_CONFIG_DEFAULTS = {"rope_max_seq_len": 1024, "qk_norm": None, "cross_attn_norm": True}  # a config.json may omit
DIFFUSERS_VERSION = "0.35.0"  # the config format version written; any diffusers with Wan2.1 reads it


def _join(*parts) -> str:
  return ".".join(p for p in parts if p is not None)


def strip_prefix(key: str) -> str:
  """`key` without a known checkpoint prefix (`model.diffusion_model.`, `pipe.dit.`, ...)."""
  for prefix in _PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix) :]
  return key


def torch_layout(sd: Mapping[str, np.ndarray]) -> str:
  """The naming of `sd`: "original" (Wan release / DiffSynth) or "diffusers", told apart by the head's name."""
  return "original" if any(strip_prefix(k) == "head.head.weight" for k in sd) else "diffusers"


def layer_count(sd: Mapping[str, np.ndarray]) -> int:
  """The block count of a state dict (either naming), from its key names."""
  return 1 + max((int(k.split(".")[1]) for k in map(strip_prefix, sd) if k.startswith("blocks.")), default=-1)


def _torch_names(layout: str) -> dict[str, str]:
  """Our module -> its PyTorch module in `layout` (block modules without their `blocks.{i}.`)."""
  col = 1 + LAYOUTS.index(layout)
  return {row[0]: row[col] for row in TOP_KEYS + BLOCK_KEYS}


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
def wan_dit_config_from_json(cfg: dict, **overrides) -> WanDiTConfig:
  """Our WanDiTConfig from a diffusers config.json or an original Wan2.1 config.json."""
  if "num_attention_heads" in cfg:  # diffusers
    fields = {
      ours: cfg.get(theirs, _CONFIG_DEFAULTS[theirs]) if theirs in _CONFIG_DEFAULTS else cfg[theirs]
      for ours, theirs in CONFIG_KEYS
      if ours
    }
    fields.update(patch_size=tuple(fields["patch_size"]), out_channels=fields["out_channels"] or fields["in_channels"])
    for ours, key in CONFIG_KEYS:
      if ours is None and cfg.get(key) is not None:
        raise ValueError(f"config.json: {key}={cfg[key]} (image-conditioned Wan) is not supported")
  elif "dim" in cfg and "num_heads" in cfg:  # original Wan2.1 release
    fields = dict(
      patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
      num_heads=cfg["num_heads"],
      head_dim=cfg["dim"] // cfg["num_heads"],
      in_channels=cfg["in_dim"],
      out_channels=cfg["out_dim"],
      text_dim=cfg.get("text_dim", 4096),
      freq_dim=cfg["freq_dim"],
      ffn_dim=cfg["ffn_dim"],
      num_layers=cfg["num_layers"],
      eps=cfg.get("eps", 1e-6),
      qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None,
      cross_attn_norm=cfg.get("cross_attn_norm", True),
    )
  else:
    raise ValueError("config.json is neither a diffusers WanTransformer3DModel nor an original Wan2.1 config")
  return WanDiTConfig(**{**fields, **overrides})


def diffusers_config(cfg: WanDiTConfig) -> dict:
  """A diffusers `WanTransformer3DModel` config.json for our WanDiTConfig (text-to-video Wan2.1)."""
  value = lambda v: list(v) if isinstance(v, tuple) else v
  return {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    **{theirs: None if ours is None else value(getattr(cfg, ours)) for ours, theirs in CONFIG_KEYS},
  }


def wan_dit_config_from_state_dict(sd: Mapping[str, np.ndarray], **overrides) -> WanDiTConfig:
  """A WanDiTConfig inferred from tensor shapes, for checkpoints without a config.json (DiffSynth /
  MicroVerse full fine-tunes). The head count is not in the shapes: Wan2.1 uses head_dim 128."""
  name = _torch_names(torch_layout(sd))
  sd = {strip_prefix(k): v for k, v in sd.items()}
  try:
    e, c, *patch = sd["patch_embedding.weight"].shape
    out = sd[f"{name['head']}.weight"].shape[0] // int(np.prod(patch))
    fields = dict(
      patch_size=tuple(patch),
      in_channels=c,
      out_channels=out,
      text_dim=sd[f"{name['text_embed_1']}.weight"].shape[1],
      freq_dim=sd[f"{name['time_embed_1']}.weight"].shape[1],
      ffn_dim=sd[f"blocks.0.{name['ffn_in']}.weight"].shape[0],
      num_layers=layer_count(sd),
      qk_norm="rms_norm_across_heads" if f"blocks.0.{name['self_attn.norm_q']}.weight" in sd else None,
      cross_attn_norm=f"blocks.0.{name['norm2']}.weight" in sd,
    )
  except KeyError as e:
    raise ValueError(f"not a Wan2.1 DiT state dict: missing key {e.args[0]!r}") from None
  head_dim = overrides.pop("head_dim", 128)
  if e % head_dim:
    raise ValueError(
      f"model width {e} is not a multiple of head_dim {head_dim}; put a config.json "
      "(diffusers or original Wan2.1) beside the checkpoint"
    )
  return WanDiTConfig(**{**fields, "num_heads": e // head_dim, "head_dim": head_dim, **overrides})


# ---------------------------------------------------------------------------------------------
# Weights: import reads the tables left to right, export right to left
# ---------------------------------------------------------------------------------------------
def _to_ours(kind: str, param: str | None, a):
  if param == "kernel":
    return a.T if kind == "linear" else np.transpose(a, (2, 3, 4, 1, 0)).reshape(-1, a.shape[0])
  return a[0] if kind == "table" else a


def _to_torch(kind: str, param: str | None, a, cfg: WanDiTConfig):
  if param == "kernel":
    if kind == "linear":
      return a.T
    return a.reshape(*cfg.patch_size, cfg.in_channels, cfg.dim).transpose(4, 3, 0, 1, 2)
  return a[None] if kind == "table" else a


def wan_dit_arrays(sd: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
  """PyTorch tensors (diffusers or original names, known prefixes allowed) -> our dotted parameter paths
  (blocks stacked on a leading axis). A missing key raises KeyError naming it; ValueError for leftover
  keys or layers whose shapes disagree."""
  name = _torch_names(torch_layout(sd))
  sd = {strip_prefix(k): v for k, v in sd.items()}
  used = set()

  def module(ours: str, theirs: str, kind: str, into: dict) -> None:
    for t, o in _TENSORS[kind]:
      used.add(_join(theirs, t))
      into[_join(ours, o)] = _to_ours(kind, o, sd[_join(theirs, t)])

  out, layers = {}, []
  for ours, *_, kind in TOP_KEYS:
    module(ours, name[ours], kind, out)
  for i in range(num_layers):
    layers.append({})
    for ours, *_, kind in BLOCK_KEYS:
      if ours != "norm2" or f"blocks.{i}.{name[ours]}.weight" in sd:
        module(ours, f"blocks.{i}.{name[ours]}", kind, layers[-1])
  for key in layers[0] if layers else ():
    shapes = {np.shape(layer[key]) for layer in layers}
    if len(shapes) > 1:
      raise ValueError(f"shape mismatch at blocks.*.{key}: layers disagree, shapes {sorted(shapes)}")
    out[f"blocks.{key}"] = np.stack([np.asarray(layer[key]) for layer in layers])
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(f"unexpected keys in the checkpoint: {leftover}")
  return out


def wan_dit_state_dict(params: Mapping[str, np.ndarray], cfg: WanDiTConfig) -> dict[str, np.ndarray]:
  """Our base parameters (dotted paths) -> diffusers-named tensors in torch layouts: `wan_dit_arrays` inverted.
  ValueError naming parameters no table row covers."""
  name, used, out = _torch_names("diffusers"), set(), {}

  def module(ours: str, theirs: str, kind: str, i: int | None = None) -> None:
    for t, o in _TENSORS[kind]:
      key = _join(ours, o)
      used.add(key)
      out[_join(theirs, t)] = _to_torch(kind, o, params[key] if i is None else params[key][i], cfg)

  for ours, *_, kind in TOP_KEYS:
    module(ours, name[ours], kind)
  for i in range(cfg.num_layers):
    for ours, *_, kind in BLOCK_KEYS:
      if ours != "norm2" or "blocks.norm2.scale" in params:
        module(f"blocks.{ours}", f"blocks.{i}.{name[ours]}", kind, i)
  left = sorted(set(params) - used)
  if left:
    raise ValueError(f"parameters with no diffusers name: {left}")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
