"""Exports a trained DiT: as our converted checkpoint, as a diffusers model, or its LoRA as PEFT safetensors.

  python -m microverse_jax.export --workdir=DIR --out=DIR                                        # orbax
  python -m microverse_jax.export --workdir=DIR --format=diffusers --out=DIR
  python -m microverse_jax.export --workdir=DIR --format=lora --out=lora.safetensors [--layout=comfyui]

A run that trained one Wan2.2 A14B expert (train.expert) exports as that expert: diffusers into --out's
subfolder `transformer/` (high noise, timesteps >= 1000 diffusion.boundary_ratio) or `transformer_2/` (low noise),
the names diffusers `WanPipeline` loads them by; the output line says which expert was written.

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
from microverse_jax.models.wan_dit_keys import diffusers_config, wan_dit_state_dict

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
FORMATS = {"orbax": "checkpoint", "diffusers": "diffusers", "lora": "file"}  # what each writes (files.KINDS)
EXPERT_FOLDERS = {"high": "transformer", "low": "transformer_2"}  # WanPipeline: `transformer` runs t >= boundary


def diffusers_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Our WanDiT's weights (LoRA merged) under diffusers names, torch layouts (`wan_dit_keys.wan_dit_state_dict`)."""
  merged = merge_lora(model) if model.cfg.lora_rank else model
  ours = {
    ".".join(map(str, k)): np.asarray(v[...], np.float32)
    for k, v in nnx.to_flat_state(nnx.state(merged, convert.BASE_PARAMS))
  }
  return wan_dit_state_dict(ours, model.cfg)


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


def destination(c, out: str, fmt: str) -> str:
  """Where an export of format `fmt` goes: `out`, or for an expert run's diffusers export its subfolder of `out`
  (EXPERT_FOLDERS)."""
  return os.path.join(out, EXPERT_FOLDERS[c.train.expert]) if c.train.expert and fmt == "diffusers" else out


def expert_note(c, fmt: str) -> str:
  """Which Wan2.2 A14B expert an export of run config `c` is, for its output line; "" for a one-model run."""
  if not c.train.expert:
    return ""
  boundary = f"{c.diffusion.boundary_ratio * 1000:g}"
  if c.train.expert == "high":
    note = f"the high-noise expert (timesteps >= {boundary}): WanPipeline's transformer"
  else:
    note = f"the low-noise expert (timesteps < {boundary}): WanPipeline's transformer_2"
    if fmt == "lora":
      note += " (load_lora_weights(..., load_into_transformer_2=True))"
  return f", {note}"


def export(c, workdir: str, dst: str, fmt: str = "orbax", layout: str = "comfyui"):
  """Loads the latest checkpoint of `workdir` (EMA when present) and writes `destination(c, dst, fmt)` in format
  `fmt` (a key of FORMATS); returns the model written (merged for orbax)."""
  import jax  # pylint: disable=g-import-not-at-top

  from microverse_jax import plans, train_state  # pylint: disable=g-import-not-at-top

  dst = destination(c, dst, fmt)
  check_out(workdir, dst, fmt)
  model = train_state.load_dit(plans.resolve(c, jax.device_count()), workdir=workdir)
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
  print(f"wrote {destination(F.config, F.out, F.format)} ({F.format}{expert_note(F.config, F.format)})", flush=True)


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
