"""LoRA utilities. The factors live in `layers.Dense` (as `nnx.LoRAParam`): merging them away, and
PEFT-named LoRA files (DiffSynth / MicroVerse `step-N.safetensors`, diffusers, ComfyUI) in and out.

PEFT stores per linear layer lora_A (r, in) and lora_B (out, r), delta W = scale * B @ A on torch's
(out, in) weight; ours are a (in, r), b (r, out) on the (in, out) kernel, delta = lora_scale * a @ b,
stacked over the block axis L. So a = A.T, b = B.T * scale / lora_scale.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microverse_jax.models.layers import FLOAT_DTYPES, Dense
from microverse_jax.models.wan_dit_keys import BLOCK_KEYS


def merge_lora(model: nnx.Module) -> nnx.Module:
  """A copy of `model` without LoRA factors: each kernel becomes kernel + (alpha / r) * a @ b.

  Works on scanned (stacked) layers too: a (..., in, r) @ b (..., r, out) batches over the layer axis.
  """
  merged = nnx.clone(model)
  for _, module in nnx.iter_modules(merged):
    if isinstance(module, Dense) and module.lora_a is not None:
      delta = jnp.matmul(module.lora_a[...], module.lora_b[...]) * module.lora_scale
      module.kernel[...] = module.kernel[...] + delta
      module.lora_a = module.lora_b = None
      module.lora_scale = 0.0
  if hasattr(merged, "cfg") and dataclasses.is_dataclass(merged.cfg):
    merged.cfg = dataclasses.replace(merged.cfg, lora_rank=0)
  return merged


# ---------------------------------------------------------------------------------------------
# PEFT LoRA files: DiffSynth / MicroVerse training outputs, diffusers, ComfyUI
# ---------------------------------------------------------------------------------------------
# Our Dense inside a Wan block -> (diffusers module name, original Wan / DiffSynth module name).
WAN_BLOCK_MODULES = {ours: (diffusers, original) for ours, diffusers, original, kind in BLOCK_KEYS if kind == "linear"}
# Key templates of a LoRA file, per layout; `module` is the diffusers or original name.
PEFT_LAYOUTS = {
  "comfyui": ("diffusion_model.blocks.{i}.{module}.lora_{ab}.weight", "original"),
  "diffusers": ("transformer.blocks.{i}.{module}.lora_{ab}.weight", "diffusers"),
  "diffsynth": ("blocks.{i}.{module}.lora_{ab}.default.weight", "original"),
}
_NAMES = {name: ours for ours, names in WAN_BLOCK_MODULES.items() for name in names}
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "pipe.dit.")
_FACTOR = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_ALPHA = re.compile(r"^blocks\.(\d+)\.(.+)\.alpha$")


def _strip(key: str) -> str:
  for prefix in _PREFIXES:
    key = key.removeprefix(prefix)
  return key


def peft_to_lora(sd: Mapping[str, np.ndarray], num_layers: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """PEFT-named LoRA tensors -> {our block module ("self_attn.q", "ffn_in", ...): (a (L, in, r), b (L, r, out))}
  with delta = a @ b, the file's scale folded into b.

  Keys: `blocks.{i}.{module}.lora_A[.default].weight` (r, in) and `lora_B` (out, r) (or kohya's
  lora_down / lora_up), module named as in original Wan / DiffSynth (`self_attn.q`, `ffn.0`) or
  diffusers (`attn1.to_q`, `ffn.net.0.proj`), optionally prefixed (`diffusion_model.`, `transformer.`,
  `base_model.model.`, `pipe.dit.`). A `{module}.alpha` entry scales by alpha / r; without one the
  scale is 1 (DiffSynth / PEFT with lora_alpha = r, diffusers with no network alphas).
  Raises ValueError listing keys it cannot place, or naming a tensor that is not a finite float
  (alpha: a finite number), a factor given by two keys, and modules with missing layers or whose
  lora_A and lora_B ranks differ or are 0.
  """
  factors: dict[tuple[str, int], dict[str, np.ndarray]] = {}
  keys: dict[tuple[str, int, str], str] = {}
  unplaced = []
  for key, value in sd.items():
    name = _strip(key)
    m = _FACTOR.match(name) or _ALPHA.match(name)
    ours = _NAMES.get(m.group(2)) if m else None
    if ours is None:
      unplaced.append(key)
      continue
    part = "alpha" if m.re is _ALPHA else ("a" if m.group(3) in ("lora_A", "lora_down") else "b")
    layer = int(m.group(1))
    if (ours, layer, part) in keys:
      raise ValueError(f"{keys[ours, layer, part]!r} and {key!r} are the same LoRA tensor: keep one")
    keys[ours, layer, part] = key
    factors.setdefault((ours, layer), {})[part] = _finite(key, value, part)
  if unplaced:
    raise ValueError(
      f"LoRA keys that match no LoRA target of the Wan DiT ({sorted(WAN_BLOCK_MODULES)}): "
      f"{sorted(unplaced)[:20]}{' ...' if len(unplaced) > 20 else ''}"
    )
  out, problems = {}, []
  for module in sorted({m for m, _ in factors}):
    layers = {i: f for (m, i), f in factors.items() if m == module}
    absent = sorted(set(range(num_layers)) - set(layers))
    extra = sorted(set(layers) - set(range(num_layers)))
    half = [f"{module}@{i}" for i, f in layers.items() if not {"a", "b"} <= set(f)]
    if absent or extra or half:
      problems.append(
        f"{module}: layers missing {absent}, beyond the model's {num_layers} {extra}, without both factors {half}"
      )
      continue
    ranks = {i: (f["a"].shape[0], f["b"].shape[1]) for i, f in layers.items()}
    bad = {i: r for i, r in sorted(ranks.items()) if r[0] != r[1] or r[0] == 0}
    if bad:
      problems.append(f"{module}: ranks of (lora_A, lora_B) differ or are 0, by layer: {bad}")
      continue
    a_list, b_list = [], []
    for i in range(num_layers):
      f = layers[i]
      rank = f["a"].shape[0]
      scale = float(np.asarray(f["alpha"]).reshape(())) / rank if "alpha" in f else 1.0
      a_list.append(f["a"].T)
      b_list.append(f["b"].T * scale)
    if len({a.shape for a in a_list}) > 1 or len({b.shape for b in b_list}) > 1:
      problems.append(f"{module}: layers disagree in shape")
      continue
    out[module] = (np.stack(a_list), np.stack(b_list))
  if problems:
    raise ValueError("LoRA file is incomplete or inconsistent:\n  " + "\n  ".join(problems))
  return out


def _finite(key: str, value, part: str) -> np.ndarray:
  """A LoRA factor (a 2-D float tensor) or alpha (one number) as float32; ValueError naming `key` otherwise."""
  value = np.asarray(value)
  if part == "alpha":
    if value.size != 1 or not (value.dtype in FLOAT_DTYPES or value.dtype.kind in "iu"):
      raise ValueError(f"{key}: alpha must be one number, got {value.dtype} of shape {value.shape}")
  elif value.ndim != 2 or value.dtype not in FLOAT_DTYPES:
    raise ValueError(f"{key}: a LoRA factor must be a 2-D float tensor, got {value.dtype} of shape {value.shape}")
  value = value.astype(np.float32)
  if not np.isfinite(value).all():
    raise ValueError(f"{key}: holds NaN or inf values")
  return value


def _put(var, value: np.ndarray) -> None:
  old = var[...]
  sharding = getattr(old, "sharding", None)
  value = np.asarray(value).astype(old.dtype)
  var[...] = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


def set_lora(
  model: nnx.Module, factors: Mapping[str, tuple[np.ndarray, np.ndarray]], source: str, *, strict: bool = True
) -> None:
  """Puts `peft_to_lora` factors into a WanDiT: into its LoRA params (b divided by the model's
  alpha / rank; a smaller file rank is zero-padded), or merged into the base kernels of a model
  without LoRA. `strict`: every LoRA target of the model must be in the file (else its b is zeroed).
  Raises one ValueError listing modules missing / unexpected and shape or rank conflicts."""
  blocks = model.blocks
  targets = {name: _module(blocks, name) for name in WAN_BLOCK_MODULES}
  with_lora = {n for n, m in targets.items() if m.lora_a is not None}
  missing = sorted(with_lora - set(factors)) if strict else []
  problems = [f"missing from the file (the model trains them; strict=False zeroes them): {missing}"] if missing else []
  for name, (a, b) in sorted(factors.items()):
    m = targets[name]
    kernel = m.kernel[...].shape  # (L, in, out)
    if a.ndim != 3 or b.ndim != 3 or a.shape[2] != b.shape[1]:
      problems.append(f"{name}: a {a.shape} and b {b.shape} are not (L, in, r) and (L, r, out)")
    elif a.shape[:2] != kernel[:2] or b.shape[::2] != kernel[::2]:
      problems.append(f"{name}: file (L, in) {a.shape[:2]}, (L, out) {b.shape[::2]}; model {kernel[:2]}, {kernel[::2]}")
    elif m.lora_a is not None and a.shape[-1] > m.lora_a[...].shape[-1]:
      problems.append(f"{name}: file rank {a.shape[-1]} > model lora_rank {m.lora_a[...].shape[-1]}")
  if problems:
    raise ValueError(f"{source}: LoRA does not fit the model:\n  " + "\n  ".join(problems))
  for name, m in targets.items():
    if name not in factors:
      if m.lora_b is not None:
        _put(m.lora_b, np.zeros(m.lora_b[...].shape, np.float32))
      continue
    a, b = factors[name]
    if m.lora_a is None:  # no LoRA params: merge the delta into the kernel
      _put(m.kernel, np.asarray(m.kernel[...], np.float32) + np.matmul(a, b))
      continue
    pad = m.lora_a[...].shape[-1] - a.shape[-1]
    _put(m.lora_a, np.pad(a, ((0, 0), (0, 0), (0, pad))))
    _put(m.lora_b, np.pad(b, ((0, 0), (0, pad), (0, 0))) / m.lora_scale)


def _module(blocks: nnx.Module, name: str) -> Dense:
  for part in name.split("."):
    blocks = getattr(blocks, part)
  return blocks


def lora_state_dict(model: nnx.Module, layout: str = "comfyui") -> dict[str, np.ndarray]:
  """The model's LoRA as PEFT tensors, per layer: lora_A (r, in), lora_B (out, r) with the model's
  alpha / rank folded into lora_B (the file's scale is 1, no alpha entries). `layout`: a key of
  PEFT_LAYOUTS: "comfyui" (`diffusion_model.blocks.0.self_attn.q.lora_A.weight`: ComfyUI, diffusers'
  `load_lora_weights` and DiffSynth all read it), "diffusers", or "diffsynth"."""
  if layout not in PEFT_LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {sorted(PEFT_LAYOUTS)}")
  template, naming = PEFT_LAYOUTS[layout]
  out = {}
  for name, (diffusers_name, original_name) in WAN_BLOCK_MODULES.items():
    m = _module(model.blocks, name)
    if m.lora_a is None:
      continue
    a, b = np.asarray(m.lora_a[...], np.float32), np.asarray(m.lora_b[...], np.float32) * m.lora_scale
    module = diffusers_name if naming == "diffusers" else original_name
    for i in range(a.shape[0]):
      out[template.format(i=i, module=module, ab="A")] = np.ascontiguousarray(a[i].T)
      out[template.format(i=i, module=module, ab="B")] = np.ascontiguousarray(b[i].T)
  if not out:
    raise ValueError("the model has no LoRA parameters (lora_rank=0): nothing to export")
  return out
