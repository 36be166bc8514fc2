"""Exports a trained DiT: as our converted checkpoint, as a diffusers model, or its LoRA as PEFT safetensors.

  python -m microverse_jax.export --workdir=DIR --out=DIR                                        # orbax
  python -m microverse_jax.export --workdir=DIR --format=diffusers --out=DIR
  python -m microverse_jax.export --workdir=DIR --format=lora --out=lora.safetensors [--layout=comfyui]

The config is the workdir's saved config.json; `--config.key=value` overrides it and
`--config=configs/FILE.py[:arg]` replaces it.

orbax: a converted checkpoint like `python -m microverse_jax.convert dit` writes, LoRA merged (EMA weights
  when present): train from it with `--config.init_from=DIR` (model.lora_rank=0) or sample with `--checkpoint=DIR`.
diffusers: a `WanTransformer3DModel` directory (config.json + diffusion_pytorch_model*.safetensors, LoRA
  merged) for `WanTransformer3DModel.from_pretrained(DIR)` or `WanPipeline.from_pretrained(..., transformer=...)`.
lora: the LoRA factors alone, PEFT names (see `models.lora.lora_state_dict`); "comfyui" keys
  (`diffusion_model.blocks.0.self_attn.q.lora_A.weight`) load in ComfyUI, DiffSynth and diffusers'
  `WanPipeline.load_lora_weights`; "diffusers" keys (`transformer.blocks.0.attn1.to_q.lora_A.weight`) in diffusers.
Files are written with `safetensors.numpy`: no torch needed. Folders are written whole or not at all
(`files.write_folder`): an earlier export of the same format at --out is replaced once the new one is
complete; a folder of another kind, and anything inside the run's checkpoints/ (pruned as training goes
on), is refused before any weight is read.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from microverse_jax import convert, files
from microverse_jax.models.lora import PEFT_LAYOUTS, lora_state_dict, merge_lora

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.35.0"  # the config format version written; any diffusers with Wan2.1 reads it
FORMATS = {"orbax": "checkpoint", "diffusers": "diffusers", "lora": "file"}  # what each writes (files.KINDS)


def diffusers_config(cfg) -> dict:
  """A diffusers `WanTransformer3DModel` config.json for our WanDiTConfig (text-to-video Wan2.1)."""
  return {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "patch_size": list(cfg.patch_size),
    "num_attention_heads": cfg.num_heads,
    "attention_head_dim": cfg.head_dim,
    "in_channels": cfg.in_channels,
    "out_channels": cfg.out_channels,
    "text_dim": cfg.text_dim,
    "freq_dim": cfg.freq_dim,
    "ffn_dim": cfg.ffn_dim,
    "num_layers": cfg.num_layers,
    "cross_attn_norm": cfg.cross_attn_norm,
    "qk_norm": cfg.qk_norm,
    "eps": cfg.eps,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": cfg.rope_max_seq_len,
    "pos_embed_seq_len": None,
  }


def diffusers_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Our WanDiT's weights (LoRA merged) under diffusers names, torch layouts: the inverse of
  `convert.wan_dit_arrays`."""
  cfg = model.cfg
  merged = merge_lora(model) if cfg.lora_rank else model
  ours = {
    ".".join(map(str, k)): np.asarray(v[...], np.float32)
    for k, v in nnx.to_flat_state(nnx.state(merged, convert.BASE_PARAMS))
  }
  used, out = set(), {}

  def take(key, i=None):
    used.add(key)
    return ours[key] if i is None else ours[key][i]

  def linear(src, dst, i=None):
    out[f"{dst}.weight"] = take(f"{src}.kernel", i).T
    out[f"{dst}.bias"] = take(f"{src}.bias", i)

  pt, ph, pw = cfg.patch_size  # (pt*ph*pw*C, E) -> (E, C, pt, ph, pw)
  kernel = take("patch_embed.kernel").reshape(pt, ph, pw, cfg.in_channels, cfg.dim)
  out["patch_embedding.weight"] = kernel.transpose(4, 3, 0, 1, 2)
  out["patch_embedding.bias"] = take("patch_embed.bias")
  for src, dst in (
    ("time_embed_1", "condition_embedder.time_embedder.linear_1"),
    ("time_embed_2", "condition_embedder.time_embedder.linear_2"),
    ("time_proj", "condition_embedder.time_proj"),
    ("text_embed_1", "condition_embedder.text_embedder.linear_1"),
    ("text_embed_2", "condition_embedder.text_embedder.linear_2"),
    ("head", "proj_out"),
  ):
    linear(src, dst)
  out["scale_shift_table"] = take("head_modulation")[None]
  for i in range(cfg.num_layers):
    p = f"blocks.{i}"
    for attn, src in (("attn1", "self_attn"), ("attn2", "cross_attn")):
      for name, dst in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
        linear(f"blocks.{src}.{name}", f"{p}.{attn}.{dst}", i)
      out[f"{p}.{attn}.norm_q.weight"] = take(f"blocks.{src}.norm_q.scale", i)
      out[f"{p}.{attn}.norm_k.weight"] = take(f"blocks.{src}.norm_k.scale", i)
    if cfg.cross_attn_norm:
      out[f"{p}.norm2.weight"] = take("blocks.norm2.scale", i)
      out[f"{p}.norm2.bias"] = take("blocks.norm2.bias", i)
    linear("blocks.ffn_in", f"{p}.ffn.net.0.proj", i)
    linear("blocks.ffn_out", f"{p}.ffn.net.2", i)
    out[f"{p}.scale_shift_table"] = take("blocks.modulation", i)[None]
  left = sorted(set(ours) - used)
  if left:
    raise ValueError(f"parameters with no diffusers name: {left}")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export_diffusers(model: nnx.Module, out_dir: str, *, dtype=np.float32, max_shard_bytes: int = 5 << 30) -> str:
  """Writes `model` (LoRA merged) as a diffusers `WanTransformer3DModel` directory: config.json and
  diffusion_pytorch_model.safetensors, or shards plus an index when larger than `max_shard_bytes`."""
  from safetensors.numpy import save_file

  sd = {k: v.astype(dtype) for k, v in diffusers_state_dict(model).items()}
  shards, size = [{}], 0
  for key, value in sd.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = value
    size += value.nbytes
  names = (
    [f"{DIFFUSERS_WEIGHTS}.safetensors"]
    if len(shards) == 1
    else [f"{DIFFUSERS_WEIGHTS}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )

  def fill(folder) -> None:
    for name, shard in zip(names, shards):
      save_file(shard, os.fspath(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
      index = {
        "metadata": {"total_size": sum(v.nbytes for v in sd.values())},
        "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
      }
      _write_json(folder / f"{DIFFUSERS_WEIGHTS}.safetensors.index.json", index)
    _write_json(folder / "config.json", diffusers_config(model.cfg))

  files.write_folder(out_dir, "diffusers", fill)
  return out_dir


def export_lora(model: nnx.Module, path: str, *, layout: str = "comfyui") -> str:
  """Writes the model's LoRA factors as a PEFT safetensors file (scale folded into lora_B, so no
  alpha entries are needed); `layout` is a key of `models.lora.PEFT_LAYOUTS`."""
  from safetensors.numpy import save

  files.write_bytes(path, save(lora_state_dict(model, layout), metadata={"format": "pt"}))
  return path


def _write_json(path, obj) -> None:
  files.write_text(path, json.dumps(obj, indent=2))


def check_out(workdir: str, dst: str, fmt: str) -> None:
  """Raises (before any weight is read) unless `workdir` is a training run and `dst` can take an export
  of format `fmt`: a new path, or an earlier export of that format; never inside the run's checkpoints/."""
  files.require_kind(workdir, ("run",), "--workdir")
  if fmt not in FORMATS:
    raise ValueError(f"format={fmt!r}: expected one of {sorted(FORMATS)}")
  files.require_kind(dst, (None, FORMATS[fmt]), "--out")
  files.check_apart(
    dst, os.path.join(workdir, "checkpoints"), "--out", "the run's checkpoints folder, pruned as training goes on"
  )


def export(c, workdir: str, dst: str, fmt: str = "orbax", layout: str = "comfyui"):
  """Loads the latest checkpoint of `workdir` (EMA when present) and writes `dst` in format `fmt`
  (a key of FORMATS); returns the model written (merged for orbax)."""
  from microverse_jax import factory  # pylint: disable=g-import-not-at-top

  check_out(workdir, dst, fmt)
  model = factory.load_dit(c, workdir=workdir)
  if fmt == "lora":
    export_lora(model, dst, layout=layout)
    return model
  if fmt == "diffusers":
    export_diffusers(model, dst)
    return model
  merged = merge_lora(model)
  convert.save_params(merged, dst, "dit")
  return merged


def main(argv):
  del argv
  F = flags.FLAGS
  export(F.config, F.workdir, F.out, F.format, F.layout)
  print(f"wrote {F.out} ({F.format})", flush=True)


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "The run's training config (default: the --workdir's saved config.json)."
  )
  flags.DEFINE_string("workdir", None, "The training workdir (latest checkpoint).", required=True)
  flags.DEFINE_string("out", None, "Output directory (orbax, diffusers) or .safetensors file (lora).", required=True)
  flags.DEFINE_enum("format", "orbax", list(FORMATS), "What to write.")
  flags.DEFINE_enum("layout", "comfyui", sorted(PEFT_LAYOUTS), "LoRA key names (--format=lora).")
  flags.DEFINE_alias("dst", "out")  # the old spelling, kept for one release


if __name__ == "__main__":
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  define_flags()
  cli.run(main, saved_config=True)
