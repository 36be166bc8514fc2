"""Weight import from public PyTorch checkpoints into our Flax NNX models.

  python -m microverse_jax.convert dit --src DIR --dst DIR     # diffusers or original Wan2.1 layout
  python -m microverse_jax.convert vae --src DIR --dst DIR     # diffusers dir, or Wan2.1_VAE.pth
  python -m microverse_jax.convert umt5 --src DIR --dst DIR    # transformers dir, or the original .pth

Sources are read without torch where possible (safetensors, single file or sharded with an index);
`.pth` files need torch, imported only inside `read_checkpoint`. The destination is an Orbax
checkpoint `DST/params` plus `DST/config.json` (the model config), which `load_params` and the
trainer's `init_from` read back.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import sys
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------
def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Memory-maps one .safetensors file into numpy arrays (bf16 via ml_dtypes)."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    start, end = info["data_offsets"]
    out[key] = mm[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def read_checkpoint(src: str, pattern: str = "*.safetensors") -> dict[str, np.ndarray]:
  """All tensors of a checkpoint: a file (.safetensors / .pth / .pt / .bin) or a directory holding
  an `*.index.json` (sharded), one or more `pattern` files, or a single .pth."""
  if os.path.isdir(src):
    index = sorted(glob.glob(os.path.join(src, "*.safetensors.index.json")))
    if index:
      with open(index[0]) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      files = [os.path.join(src, name) for name in files]
    else:
      files = sorted(glob.glob(os.path.join(src, pattern))) or sorted(glob.glob(os.path.join(src, "*.pth")))
    if not files:
      raise FileNotFoundError(f"{src}: no {pattern}, *.safetensors.index.json or *.pth files")
    out = {}
    for path in files:
      out.update(read_checkpoint(path))
    return out
  if not os.path.exists(src):
    raise FileNotFoundError(f"checkpoint not found: {src}")
  if src.endswith(".safetensors"):
    return read_safetensors(src)
  import torch  # only for original .pth releases
  sd = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
  sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def read_json(src: str, name: str = "config.json") -> dict:
  path = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the model config is needed to build the model")
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Assigning into a model
# ---------------------------------------------------------------------------------------------
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def assign(model: nnx.Module, arrays: Mapping[str, np.ndarray], source: str, dtype=jnp.float32) -> None:
  """Sets every base parameter of `model` from `arrays`, keyed by dotted parameter path.

  Raises ValueError listing missing and unexpected keys, or naming a key whose shape differs.
  """
  state = nnx.state(model, BASE_PARAMS)
  flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  missing, unexpected = sorted(set(flat) - set(arrays)), sorted(set(arrays) - set(flat))
  if missing or unexpected:
    raise ValueError(f"{source}: checkpoint does not match the model.\n  missing: {missing}\n"
                     f"  unexpected: {unexpected}")
  for key, var in flat.items():
    if tuple(arrays[key].shape) != tuple(var.shape):
      raise ValueError(f"{source}: shape mismatch at {key}: checkpoint {tuple(arrays[key].shape)}, "
                       f"model {tuple(var.shape)}")
    var[...] = jnp.asarray(np.asarray(arrays[key], dtype=np.float32), dtype)
  nnx.update(model, state)


def _linear(sd, src: str, dst: str, out: dict, pop: set, bias: bool = True) -> None:
  """torch Linear `src` (weight (out, in), bias) -> our Dense `dst` (kernel (in, out), bias)."""
  _take(sd, f"{src}.weight", f"{dst}.kernel", out, pop, lambda a: a.T)
  if bias:
    _take(sd, f"{src}.bias", f"{dst}.bias", out, pop)


def _take(sd, src: str, dst: str, out: dict, pop: set, fn: Callable = lambda a: a) -> None:
  out[dst] = fn(sd[src])
  pop.add(src)


# ---------------------------------------------------------------------------------------------
# Wan DiT
# ---------------------------------------------------------------------------------------------
# Original Wan2.1 release names -> diffusers names (substring renames, applied in order).
_WAN_ORIGINAL_RENAMES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("self_attn.", "attn1."), ("cross_attn.", "attn2."),
    (".o.", ".to_out.0."), (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."),
    ("head.modulation", "scale_shift_table"), ("head.head", "proj_out"), ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
    # The original's norm3 is the cross-attention norm (diffusers norm2) and vice versa.
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
)


def wan_original_to_diffusers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in sd.items():
    key = key.removeprefix("model.diffusion_model.")
    for old, new in _WAN_ORIGINAL_RENAMES:
      key = key.replace(old, new)
    out[key] = value
  return out


def wan_dit_config_from_json(cfg: dict, **overrides):
  """Our WanDiTConfig from a diffusers config.json or an original Wan2.1 config.json."""
  from microverse_jax.models.wan_dit import WanDiTConfig
  if "num_attention_heads" in cfg:  # diffusers
    fields = dict(patch_size=tuple(cfg["patch_size"]), num_heads=cfg["num_attention_heads"],
                  head_dim=cfg["attention_head_dim"], in_channels=cfg["in_channels"],
                  out_channels=cfg["out_channels"] or cfg["in_channels"], text_dim=cfg["text_dim"],
                  freq_dim=cfg["freq_dim"], ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"],
                  eps=cfg["eps"], rope_max_seq_len=cfg.get("rope_max_seq_len", 1024),
                  qk_norm=cfg.get("qk_norm"), cross_attn_norm=cfg.get("cross_attn_norm", True))
    for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
      if cfg.get(key) is not None:
        raise ValueError(f"config.json: {key}={cfg[key]} (image-conditioned Wan) is not supported")
  elif "dim" in cfg and "num_heads" in cfg:  # original Wan2.1 release
    fields = dict(patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), num_heads=cfg["num_heads"],
                  head_dim=cfg["dim"] // cfg["num_heads"], in_channels=cfg["in_dim"],
                  out_channels=cfg["out_dim"], text_dim=cfg.get("text_dim", 4096),
                  freq_dim=cfg["freq_dim"], ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"],
                  eps=cfg.get("eps", 1e-6), qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None,
                  cross_attn_norm=cfg.get("cross_attn_norm", True))
  else:
    raise ValueError("config.json is neither a diffusers WanTransformer3DModel nor an original Wan2.1 config")
  return WanDiTConfig(**{**fields, **overrides})


def wan_dit_arrays(sd: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
  """Diffusers-named tensors -> our dotted parameter paths (blocks stacked on a leading axis)."""
  if "head.head.weight" in sd or "model.diffusion_model.head.head.weight" in sd:
    sd = wan_original_to_diffusers(sd)
  out, used = {}, set()
  w = sd["patch_embedding.weight"]  # (E, C, pt, ph, pw) -> (pt*ph*pw*C, E)
  _take(sd, "patch_embedding.weight", "patch_embed.kernel", out, used,
        lambda a: np.transpose(a, (2, 3, 4, 1, 0)).reshape(-1, w.shape[0]))
  _take(sd, "patch_embedding.bias", "patch_embed.bias", out, used)
  for src, dst in (("condition_embedder.time_embedder.linear_1", "time_embed_1"),
                   ("condition_embedder.time_embedder.linear_2", "time_embed_2"),
                   ("condition_embedder.time_proj", "time_proj"),
                   ("condition_embedder.text_embedder.linear_1", "text_embed_1"),
                   ("condition_embedder.text_embedder.linear_2", "text_embed_2"),
                   ("proj_out", "head")):
    _linear(sd, src, dst, out, used)
  _take(sd, "scale_shift_table", "head_modulation", out, used, lambda a: a[0])
  layers = []
  for i in range(num_layers):
    blk, p = {}, f"blocks.{i}"
    for attn, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
      for src, dst in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
        _linear(sd, f"{p}.{attn}.{src}", f"{ours}.{dst}", blk, used)
      _take(sd, f"{p}.{attn}.norm_q.weight", f"{ours}.norm_q.scale", blk, used)
      _take(sd, f"{p}.{attn}.norm_k.weight", f"{ours}.norm_k.scale", blk, used)
    if f"{p}.norm2.weight" in sd:
      _take(sd, f"{p}.norm2.weight", "norm2.scale", blk, used)
      _take(sd, f"{p}.norm2.bias", "norm2.bias", blk, used)
    _linear(sd, f"{p}.ffn.net.0.proj", "ffn_in", blk, used)
    _linear(sd, f"{p}.ffn.net.2", "ffn_out", blk, used)
    _take(sd, f"{p}.scale_shift_table", "modulation", blk, used, lambda a: a[0])
    layers.append(blk)
  for key in layers[0] if layers else ():
    shapes = {np.shape(layer[key]) for layer in layers}
    if len(shapes) > 1:
      raise ValueError(f"shape mismatch at blocks.*.{key}: layers disagree, shapes {sorted(shapes)}")
    out[f"blocks.{key}"] = np.stack([np.asarray(layer[key]) for layer in layers])
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(f"unexpected keys in the checkpoint: {leftover}")
  return out


def _checked(fn):
  """Turns a KeyError from a mapping function into a clear 'missing key' error."""
  def wrapper(src, *args, **kwargs):
    try:
      return fn(src, *args, **kwargs)
    except KeyError as e:
      raise ValueError(f"{src}: checkpoint is missing key {e.args[0]!r}") from None
    except ValueError as e:
      if str(e).startswith(str(src)):
        raise
      raise ValueError(f"{src}: {e}") from None
  return wrapper


@_checked
def wan_dit_from_diffusers(src: str, dtype=jnp.float32, **config_overrides):
  """A WanDiT from a diffusers `WanTransformer3DModel.save_pretrained` directory, or an original
  Wan2.1 release directory (`config.json` + `diffusion_pytorch_model*.safetensors`)."""
  from microverse_jax.models.wan_dit import WanDiT
  cfg = wan_dit_config_from_json(read_json(src), **config_overrides)
  model = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  model = _materialize(model)
  assign(model, wan_dit_arrays(read_checkpoint(src), cfg.num_layers), src, dtype)
  return model


def _materialize(abstract_model: nnx.Module) -> nnx.Module:
  """Zero-filled concrete arrays for an `nnx.eval_shape` model (cheap; values are overwritten)."""
  graphdef, state = nnx.split(abstract_model)
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# Wan VAE and umT5 text encoder (the key mappings live beside the models)
# ---------------------------------------------------------------------------------------------
def _build(model_cls, cfg) -> nnx.Module:
  return _materialize(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))


@_checked
def wan_vae_from_diffusers(src: str, dtype=jnp.float32, **config_overrides):
  """A WanVAE from a diffusers `AutoencoderKLWan.save_pretrained` directory."""
  from microverse_jax.models.wan_vae import WanVAE, wan_vae_arrays, wan_vae_config_from_diffusers
  model = _build(WanVAE, wan_vae_config_from_diffusers(read_json(src), **config_overrides))
  assign(model, wan_vae_arrays(model, read_checkpoint(src), "diffusers"), src, dtype)
  return model


@_checked
def wan_vae_from_original(src: str, dtype=jnp.float32, **config_overrides):
  """A WanVAE from the original `Wan2.1_VAE.pth` (a file, or a directory holding it); the config
  is the "wan2.1" preset unless overridden."""
  from microverse_jax.models.wan_vae import WanVAE, WanVAEConfig, wan_vae_arrays
  if os.path.isdir(src):
    src = os.path.join(src, "Wan2.1_VAE.pth")
  model = _build(WanVAE, WanVAEConfig.preset("wan2.1", **config_overrides))
  assign(model, wan_vae_arrays(model, read_checkpoint(src), "original"), src, dtype)
  return model


def wan_vae_from_path(src: str, dtype=jnp.float32):
  """CLI entry: a diffusers directory (has config.json) or the original .pth file / directory."""
  if os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
    return wan_vae_from_diffusers(src, dtype)
  return wan_vae_from_original(src, dtype)


@_checked
def umt5_from_transformers(src: str, dtype=jnp.float32, **config_overrides):
  """A UMT5Encoder from a transformers `UMT5EncoderModel.save_pretrained` directory."""
  from microverse_jax.models.umt5 import UMT5Encoder, umt5_arrays, umt5_config_from_transformers
  cfg = umt5_config_from_transformers(read_json(src), **config_overrides)
  model = _build(UMT5Encoder, cfg)
  assign(model, umt5_arrays(read_checkpoint(src), cfg.num_layers, "transformers"), src, dtype)
  return model


@_checked
def umt5_from_original(src: str, dtype=jnp.float32, **config_overrides):
  """A UMT5Encoder from Wan's `models_t5_umt5-xxl-enc-bf16.pth` (a file, or a directory holding
  it); the config is inferred from the tensor shapes."""
  from microverse_jax.models.umt5 import UMT5Encoder, umt5_arrays, umt5_config_from_original
  if os.path.isdir(src):
    src = os.path.join(src, "models_t5_umt5-xxl-enc-bf16.pth")
  sd = read_checkpoint(src)
  cfg = umt5_config_from_original(sd, **config_overrides)
  model = _build(UMT5Encoder, cfg)
  assign(model, umt5_arrays(sd, cfg.num_layers, "original"), src, dtype)
  return model


def umt5_from_path(src: str, dtype=jnp.float32):
  """CLI entry: a transformers directory (has config.json) or the original .pth file / directory."""
  if os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
    return umt5_from_transformers(src, dtype)
  return umt5_from_original(src, dtype)


# ---------------------------------------------------------------------------------------------
# Orbax round trip
# ---------------------------------------------------------------------------------------------
def save_params(model: nnx.Module, dst: str, kind: str) -> None:
  """Writes base parameters to `dst/params` (Orbax) and the config to `dst/config.json`."""
  import orbax.checkpoint as ocp
  dst = _local_or_gcs(dst)
  state = nnx.state(model, BASE_PARAMS).to_pure_dict()
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(dst / "params", state, force=True)
  meta = {"kind": kind, "config": dataclasses.asdict(model.cfg)}
  (dst / "config.json.tmp").write_text(json.dumps(meta, indent=1))
  (dst / "config.json.tmp").replace(dst / "config.json")


def _local_or_gcs(path: str):
  """An epath.Path; local paths made absolute (Orbax needs them so), gs:// kept as is."""
  from etils import epath
  return epath.Path(path) if str(path).startswith("gs://") else epath.Path(os.path.abspath(path))


def restore_params(src: str, target):
  """Restores `save_params` output as a pure dict shaped like `target` (ShapeDtypeStructs,
  optionally with shardings, so each device reads only its shard)."""
  import orbax.checkpoint as ocp
  path = _local_or_gcs(src) / "params"
  if not path.is_dir():
    raise FileNotFoundError(f"{src}: no converted checkpoint (expected {path})")
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path, target)


def load_params(src: str, model: nnx.Module) -> None:
  """Restores `save_params` output into `model`'s base parameters."""
  state = nnx.state(model, BASE_PARAMS)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict())
  nnx.replace_by_pure_dict(state, restore_params(src, target))
  nnx.update(model, state)


CONVERTERS: dict[str, Callable] = {"dit": wan_dit_from_diffusers, "vae": wan_vae_from_path,
                                   "umt5": umt5_from_path}


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m microverse_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("kind", choices=sorted(CONVERTERS))
  parser.add_argument("--src", required=True, help="source checkpoint directory or file")
  parser.add_argument("--dst", required=True, help="output directory (Orbax checkpoint)")
  args = parser.parse_args(argv)
  print(f"converting {args.kind} from {args.src} ...", flush=True)
  model = CONVERTERS[args.kind](args.src)
  save_params(model, args.dst, args.kind)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, BASE_PARAMS)))
  print(f"wrote {n:,} parameters to {args.dst}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
