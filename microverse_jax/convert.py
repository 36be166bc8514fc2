"""Weight import from public PyTorch checkpoints into our Flax NNX models.

  python -m microverse_jax.convert dit --src DIR --out DIR     # diffusers or original Wan2.1 layout
  python -m microverse_jax.convert vae --src DIR --out DIR     # diffusers dir, or Wan2.1_VAE.pth / Wan2.2_VAE.pth
  python -m microverse_jax.convert umt5 --src DIR --out DIR    # transformers dir, or the original .pth

Sources are read without torch where possible (safetensors, single file or sharded with an index);
`.pth` files need torch, imported only inside `read_checkpoint`. The destination is an Orbax
checkpoint `OUT/params` plus `OUT/config.json` (the model config), which `load_params` and the
trainer's `init_from` read back.

One loading API takes either format (see docs/model.md):
  checkpoint_config(src, kind)         the architecture config of a converted dir or a PyTorch checkpoint
  restore_params(src, target, kind)    weights as a pure dict shaped and sharded like `target`
  load_params(src, model, kind)        the same, into a model's base parameters
  load_lora(src, model)                a PEFT LoRA (DiffSynth/MicroVerse `step-N.safetensors`, diffusers)
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import math
import os
import pickle
import re
import struct
import types
import typing
import zipfile
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from microverse_jax.models.layers import FLOAT_DTYPES

_ST_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U64": np.uint64,
  "U32": np.uint32,
  "U16": np.uint16,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_MAX_HEADER = 100_000_000  # bytes; the safetensors library's own limit


# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------
def _regular_file(path: str) -> None:
  """Raises unless `path` is a regular file (a FIFO or device would block or never end)."""
  if os.path.exists(path) and not os.path.isfile(path):
    raise ValueError(f"{path}: not a regular file (a directory, FIFO, socket or device); refusing to read it")


def _no_duplicates(pairs: list) -> dict:
  twice = sorted(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
  if twice:
    raise ValueError(f"keys given twice: {twice}")
  return dict(pairs)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Memory-maps one .safetensors file into numpy arrays (bf16 and fp8 via ml_dtypes).

  Raises ValueError naming the file and the problem: a short file, a header that is not a JSON object
  or longer than the file, an unknown dtype, a bad shape or data_offsets outside the data."""
  _regular_file(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if size < 8:
      raise ValueError(f"{path}: not a safetensors file ({size} bytes, less than the 8-byte header length)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(size - 8, _MAX_HEADER):
      raise ValueError(
        f"{path}: not a safetensors file (header length {n}; {size - 8} bytes follow, limit {_MAX_HEADER})"
      )
    try:
      header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
    except ValueError as e:  # not JSON, not UTF-8, or a key given twice
      raise ValueError(f"{path}: bad safetensors header: {e}") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: bad safetensors header: a JSON {type(header).__name__}, not an object")
  body = size - 8 - n
  mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if body else np.zeros(0, np.uint8)
  out = {}
  for key, info in header.items():
    if key != "__metadata__":
      out[key] = _tensor(mm, info, f"{path}: tensor {key!r}")
  return out


def _tensor(data: np.ndarray, info, where: str) -> np.ndarray:
  """One header entry {"dtype", "shape", "data_offsets": [begin, end]} as a view into `data`."""
  if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - set(info):
    raise ValueError(f"{where}: header entry {info!r} needs dtype, shape and data_offsets")
  dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  if dtype not in _ST_DTYPES:
    raise ValueError(f"{where}: unsupported dtype {dtype!r}; expected one of {sorted(_ST_DTYPES)}")
  is_count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
  if not isinstance(shape, list) or not all(map(is_count, shape)):
    raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
  if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_count, offsets)):
    raise ValueError(f"{where}: data_offsets {offsets!r} are not two non-negative integers")
  (begin, end), itemsize = offsets, np.dtype(_ST_DTYPES[dtype]).itemsize
  if not begin <= end <= data.size:
    raise ValueError(f"{where}: data_offsets {offsets} outside the {data.size} data bytes (truncated file?)")
  if end - begin != math.prod(shape) * itemsize:
    raise ValueError(f"{where}: {end - begin} bytes for {dtype} of shape {shape} ({math.prod(shape) * itemsize} bytes)")
  return data[begin:end].view(_ST_DTYPES[dtype]).reshape(shape)


def read_checkpoint(src: str, pattern: str = "*.safetensors") -> dict[str, np.ndarray]:
  """All tensors of a checkpoint: a file (.safetensors / .pth / .pt / .bin) or a directory holding
  an `*.index.json` (sharded), one or more `pattern` files, or a single .pth.

  Raises ValueError (or FileNotFoundError) naming the file and what is wrong with it."""
  if os.path.isdir(src):
    index = sorted(glob.glob(os.path.join(src, "*.safetensors.index.json")))
    if index:
      weight_map = _load_json(index[0]).get("weight_map")
      names = list(weight_map.values()) if isinstance(weight_map, dict) else []
      if not names or not all(
        isinstance(n, str) and n == os.path.basename(n) and n not in ("", ".", "..") for n in names
      ):
        raise ValueError(f"{index[0]}: weight_map must map tensor names to file names in {src}")
      files = [os.path.join(src, name) for name in sorted(set(names))]
    else:
      files = sorted(glob.glob(os.path.join(src, pattern))) or sorted(glob.glob(os.path.join(src, "*.pth")))
    if not files:
      raise FileNotFoundError(f"{src}: no {pattern}, *.safetensors.index.json or *.pth files")
    out, where = {}, {}
    for path in files:  # files only: a folder named *.safetensors is refused, not walked
      for key, value in _read_file(path).items():
        if key in out:
          raise ValueError(f"{src}: tensor {key!r} is in both {where[key]} and {path}")
        out[key], where[key] = value, path
    return out
  if not os.path.exists(src):
    raise FileNotFoundError(f"checkpoint not found: {src}")
  return _read_file(src)


def _read_file(path: str) -> dict[str, np.ndarray]:
  return read_safetensors(path) if path.endswith(".safetensors") else _read_pth(path)


def read_weights(src: str) -> dict[str, np.ndarray]:
  """`read_checkpoint(src)` for float parameters: ValueError naming the tensors not stored as floats
  (an integer or bool weight is a broken or quantized file; it is not cast)."""
  sd = read_checkpoint(src)
  odd = sorted(f"{k} ({v.dtype})" for k, v in sd.items() if v.dtype not in FLOAT_DTYPES)
  if odd:
    raise ValueError(
      f"{src}: tensors not stored as floats (no parameter takes them): {odd[:8]}{' ...' * (len(odd) > 8)}"
    )
  return sd


def _read_pth(src: str) -> dict[str, np.ndarray]:
  """An original .pth release, read with torch (>= 2.6, weights_only=True: tensors only, no pickled code)."""
  _regular_file(src)
  try:
    import torch  # pylint: disable=g-import-not-at-top  # only for original .pth releases
  except ImportError:
    raise ValueError(
      f"{src}: reading a .pth checkpoint needs torch >= 2.6 (pip install torch), or convert it to safetensors elsewhere"
    ) from None
  major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
  if (major, minor) < (2, 6):
    raise ValueError(
      f"{src}: torch {torch.__version__} is too old: .pth files are read only with torch >= 2.6 "
      "(torch.load with weights_only=True, which refuses pickled code)"
    )
  try:  # memory-mapped where the format allows it (zip, torch >= 1.6); legacy files are read whole
    sd = torch.load(src, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(src))
  except pickle.UnpicklingError as e:
    boilerplate = ("Please file an issue", "Check the documentation")
    reason = next((ln for ln in str(e).splitlines()[1:] if ln.strip() and not ln.startswith(boilerplate)), str(e))
    raise ValueError(f"{src}: refused, not a tensors-only torch file (no pickled code was run): {reason}") from None
  except Exception as e:  # torch raises many types for a file that is not a checkpoint
    first = (str(e).splitlines() or [""])[0]
    raise ValueError(f"{src}: not a readable torch checkpoint ({type(e).__name__}: {first or 'no detail'})") from None
  sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
  if not isinstance(sd, dict):
    raise ValueError(f"{src}: not a state dict (a {type(sd).__name__}, not a dict of tensor name -> tensor)")
  odd = sorted(f"{k!r}: {type(v).__name__}" for k, v in sd.items() if not isinstance(v, torch.Tensor))
  if odd:
    raise ValueError(f"{src}: not a flat state dict of tensors: {odd[:8]}{' ...' if len(odd) > 8 else ''}")
  return {str(k): v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def read_json(src: str, name: str = "config.json") -> dict:
  path = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the model config is needed to build the model")
  return _load_json(path)


def _load_json(path: str) -> dict:
  """A JSON object from `path`; ValueError naming the file if it is not one."""
  _regular_file(path)
  try:
    out = json.loads(_local_or_gcs(path).read_bytes())
  except ValueError as e:  # not JSON or not UTF-8
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(out, dict):
    raise ValueError(f"{path}: a JSON {type(out).__name__}, not an object")
  return out


# ---------------------------------------------------------------------------------------------
# Host weights and building a model
# ---------------------------------------------------------------------------------------------
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def host_weight(source: str, key: str, value, dtype) -> np.ndarray:
  """Parameter `key`'s weights cast to `dtype` on the host; ValueError naming `source` and `key` if
  they hold NaN or inf after the cast."""
  out = np.asarray(value).astype(dtype)
  if not np.isfinite(out).all():
    raise ValueError(f"{source}: {key} holds NaN or inf values ({np.dtype(dtype).name})")
  return out


def _prefixed(src: str, e: ValueError) -> ValueError:
  """`e`, its message starting with `src` (added unless it names `src` already)."""
  return e if str(e).startswith(str(src)) else ValueError(f"{src}: {e}")


def _build(model_cls, cfg) -> nnx.Module:
  """`model_cls(cfg)` with zero-filled concrete arrays (cheap; `load_params` overwrites them)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


# ---------------------------------------------------------------------------------------------
# Orbax round trip
# ---------------------------------------------------------------------------------------------
def save_params(model: nnx.Module, dst: str, kind: str) -> None:
  """Writes a converted checkpoint folder `dst`: base parameters in `dst/params` (Orbax), the config in
  `dst/config.json`. Whole or not at all (`files.write_folder`): an old converted checkpoint at `dst`
  is replaced once the new one is complete; a folder of another kind is refused."""
  import orbax.checkpoint as ocp

  from microverse_jax import files  # pylint: disable=g-import-not-at-top

  state = nnx.state(model, BASE_PARAMS).to_pure_dict()
  meta = {"kind": kind, "config": dataclasses.asdict(model.cfg)}

  def fill(folder) -> None:
    # Synchronous: a failed async save leaves Orbax's threads waiting for its signals (5 minutes) at exit.
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:
      ckpt.save(folder / "params", args=ocp.args.StandardSave(state))
    files.write_text(folder / "config.json", json.dumps(meta, indent=1))

  files.write_folder(_local_or_gcs(dst), "checkpoint", fill)


def _local_or_gcs(path: str):
  """An epath.Path; local paths made absolute (Orbax needs them so), gs:// kept as is."""
  from etils import epath

  return epath.Path(path) if str(path).startswith("gs://") else epath.Path(os.path.abspath(path))


# ---------------------------------------------------------------------------------------------
# One loading API: a converted Orbax dir or a PyTorch checkpoint, either one
# ---------------------------------------------------------------------------------------------
KINDS = ("dit", "vae", "umt5")
EXPECTED = (
  "a converted checkpoint (params/ + config.json, written by `python -m microverse_jax.convert`), "
  "a diffusers/transformers `save_pretrained` directory (config.json + *.safetensors), or a "
  ".pth/.safetensors file (original Wan2.1, DiffSynth/MicroVerse)"
)
_VAE_PTHS, _UMT5_PTH = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth"), "models_t5_umt5-xxl-enc-bf16.pth"


def _release_file(src: str, names) -> str | None:
  """The first of the release files `names` in directory `src`, if it is one and holds any."""
  found = [os.path.join(src, n) for n in names if os.path.isdir(src) and os.path.exists(os.path.join(src, n))]
  return found[0] if found else None


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {KINDS}")


def checkpoint_format(src: str) -> str:
  """ "converted" (a `save_params` directory) or "pytorch" (anything `read_checkpoint` reads).

  Raises FileNotFoundError naming the path and what was expected."""
  path = str(src)
  if path.startswith("gs://"):
    p = _local_or_gcs(path)
    if (p / "params").is_dir() and (p / "config.json").exists():
      return "converted"
    raise FileNotFoundError(
      f"{src}: not a converted checkpoint (no params/ + config.json); gs:// paths "
      f"hold converted checkpoints only. Expected {EXPECTED}"
    )
  if os.path.isdir(path):
    if os.path.isdir(os.path.join(path, "params")):
      if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{src}: params/ without config.json; expected {EXPECTED}")
      return "converted"
    if any(glob.glob(os.path.join(path, p)) for p in ("config.json", "*.safetensors", "*.pth")):
      return "pytorch"
    raise FileNotFoundError(f"{src}: no checkpoint in this directory; expected {EXPECTED}")
  if os.path.isfile(path) and path.endswith((".safetensors", ".pth", ".pt", ".bin")):
    return "pytorch"
  raise FileNotFoundError(
    f"{src}: {'not a checkpoint file' if os.path.exists(path) else 'no such file or directory'}; expected {EXPECTED}"
  )


def _converted_meta(src: str, kind: str | None) -> dict:
  meta = _load_json(str(_local_or_gcs(src) / "config.json"))
  if "kind" not in meta or not isinstance(meta.get("config"), dict):
    raise ValueError(f"{src}/config.json: not a converted checkpoint's config (needs 'kind' and 'config')")
  if kind is not None and meta["kind"] != kind:
    raise ValueError(f"{src}: a converted {meta['kind']!r} checkpoint, but a {kind!r} checkpoint was expected")
  return meta


def _config_class(kind: str):
  from microverse_jax.models.umt5 import UMT5Config
  from microverse_jax.models.wan_dit import WanDiTConfig
  from microverse_jax.models.wan_vae import WanVAEConfig

  return {"dit": WanDiTConfig, "vae": WanVAEConfig, "umt5": UMT5Config}[kind]


def _json_config(kind: str, src: str, **overrides):
  """The config of a diffusers / transformers (or original Wan2.1 DiT) config.json in or beside `src`.

  Raises ValueError naming the file and the key that is missing or does not fit its field."""
  from microverse_jax.models.umt5 import umt5_config_from_transformers
  from microverse_jax.models.wan_dit_keys import wan_dit_config_from_json
  from microverse_jax.models.wan_vae import wan_vae_config_from_diffusers

  parse = {"dit": wan_dit_config_from_json, "vae": wan_vae_config_from_diffusers, "umt5": umt5_config_from_transformers}
  path = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "config.json")
  raw = read_json(src)
  try:
    cfg = parse[kind](raw)
  except KeyError as e:
    raise ValueError(f"{path}: missing key {e.args[0]!r}") from None
  except TypeError as e:
    raise ValueError(f"{path}: a value of the wrong type ({e})") from None
  _check_fields(cfg, path)
  return dataclasses.replace(cfg, **overrides)


def _check_fields(cfg, where: str) -> None:
  """Raises ValueError naming `where` and the first field of dataclass `cfg` whose value does not fit
  its annotation (ints must also be >= 0, floats finite), e.g. num_layers="two" from a config.json."""
  hints = typing.get_type_hints(type(cfg))
  for field in dataclasses.fields(cfg):
    value, hint = getattr(cfg, field.name), hints[field.name]
    if not _fits(value, hint):
      raise ValueError(f"{where}: {field.name}={value!r} does not fit {getattr(hint, '__name__', hint)}")


def _fits(value, hint) -> bool:
  args = typing.get_args(hint)
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return any(_fits(value, a) for a in args)
  if typing.get_origin(hint) is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
    return len(items) == len(value) and all(map(_fits, value, items))
  if hint in (int, float) and isinstance(value, bool):
    return False
  if hint is int:
    return isinstance(value, int) and value >= 0
  if hint is float:
    return isinstance(value, (int, float)) and math.isfinite(value)
  return isinstance(value, hint)


def _pytorch_layout(src: str, kind: str) -> tuple[str, str]:
  """(layout, path to read) of a PyTorch checkpoint: diffusers / transformers (a directory with a
  config.json) or original (Wan's .pth files; for the DiT, original names or DiffSynth files)."""
  has_json = os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json"))
  if kind == "dit":
    return ("diffusers" if has_json or src.endswith(".safetensors") else "original"), src
  names = _VAE_PTHS if kind == "vae" else (_UMT5_PTH,)
  release = _release_file(src, names)
  if release:
    return "original", release  # a Wan release directory
  if has_json:
    return ("diffusers" if kind == "vae" else "transformers"), src
  if os.path.isdir(src):
    raise FileNotFoundError(f"{src}: no config.json and no {' or '.join(names)}; expected {EXPECTED}")
  return "original", src


def checkpoint_config(src: str, kind: str, **overrides):
  """The architecture config (WanDiTConfig / WanVAEConfig / UMT5Config) of checkpoint `src`: from a
  converted dir's config.json, a diffusers/transformers config.json, or inferred (original layouts:
  the VAE is the "wan2.1" or "wan2.2" preset by its key names, umT5 and config-less DiT files from their
  tensor shapes)."""
  _check_kind(kind)
  if checkpoint_format(src) == "converted":
    cls, fields = _config_class(kind), _converted_meta(src, kind)["config"]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
      raise ValueError(f"{src}/config.json: unknown {cls.__name__} fields {unknown}")
    try:
      cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except TypeError as e:
      raise ValueError(f"{src}/config.json: a value of the wrong type ({e})") from None
    _check_fields(cfg, f"{src}/config.json")
    return dataclasses.replace(cfg, **overrides)
  layout, path = _pytorch_layout(src, kind)
  try:
    if kind == "dit":
      cfg_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
      if os.path.exists(cfg_path):
        return _json_config(kind, path, **overrides)
      from microverse_jax.models.wan_dit_keys import wan_dit_config_from_state_dict

      return wan_dit_config_from_state_dict(read_checkpoint(path), **overrides)
    if layout in ("diffusers", "transformers"):
      return _json_config(kind, path, **overrides)
    if kind == "vae":
      from microverse_jax.models.wan_vae import wan_vae_config_from_original

      return wan_vae_config_from_original(read_checkpoint(path), **overrides)
    from microverse_jax.models.umt5 import umt5_config_from_original

    return umt5_config_from_original(read_checkpoint(path), **overrides)
  except ValueError as e:
    raise _prefixed(src, e) from None


def pytorch_arrays(src: str, kind: str, cfg=None) -> tuple[dict[str, np.ndarray], str]:
  """(our dotted parameter path -> host array, layout name) of a PyTorch checkpoint."""
  _check_kind(kind)
  layout, path = _pytorch_layout(src, kind)
  try:
    if kind == "dit":  # the layer count is all the mapping needs: read it from the names
      from microverse_jax.models import wan_dit_keys

      sd = read_weights(path)
      layout = "original Wan / DiffSynth" if wan_dit_keys.torch_layout(sd) == "original" else layout
      return wan_dit_keys.wan_dit_arrays(sd, wan_dit_keys.layer_count(sd)), layout
    cfg = cfg or checkpoint_config(src, kind)
    if kind == "vae":
      from microverse_jax.models.wan_vae import WanVAE, wan_vae_arrays

      abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
      return wan_vae_arrays(abstract, read_weights(path), layout), layout
    from microverse_jax.models.umt5 import umt5_arrays

    return umt5_arrays(read_weights(path), cfg.num_layers, layout), layout
  except KeyError as e:
    raise ValueError(f"{src}: checkpoint is missing key {e.args[0]!r}") from None
  except ValueError as e:
    raise _prefixed(src, e) from None


def _key(entry) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _flat(tree, is_leaf=None) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {".".join(_key(k) for k in path): leaf for path, leaf in leaves}


def check_match(src: str, have: Mapping[str, tuple], want: Mapping[str, tuple]) -> None:
  """One ValueError listing missing keys, unexpected keys and shape differences (both shapes)."""
  missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  shapes = [
    f"{k}: checkpoint {tuple(have[k])}, model {tuple(want[k])}"
    for k in sorted(set(have) & set(want))
    if tuple(have[k]) != tuple(want[k])
  ]
  if missing or unexpected or shapes:
    lines = [f"{src}: checkpoint does not match the model"]
    lines += [f"  missing ({len(missing)}): {missing}"] if missing else []
    lines += [f"  unexpected ({len(unexpected)}): {unexpected}"] if unexpected else []
    lines += [f"  shape mismatch ({len(shapes)}):"] + [f"    {s}" for s in shapes] if shapes else []
    raise ValueError("\n".join(lines))


def _kind_of(target) -> str:
  top = set(target)
  for kind, marker in (("dit", "patch_embed"), ("umt5", "token_embedding"), ("vae", "decoder")):
    if marker in top:
      return kind
  raise ValueError(f"cannot tell the model kind from parameters {sorted(top)[:8]}; pass kind=")


def restore_params(src: str, target, kind: str | None = None, cfg=None):
  """Weights of checkpoint `src` as a pure dict shaped like `target` (a pure dict of
  jax.ShapeDtypeStruct, optionally with `sharding`), each array placed in its target sharding.

  `src` is a converted dir (restored by Orbax directly into the shardings, each device reading
  only its shard) or a PyTorch checkpoint (read on the host, mapped to our names, then
  `jax.device_put` leaf by leaf). `kind` ("dit", "vae", "umt5") is checked against a converted
  dir's config.json and inferred from `target` when None. `cfg` is the architecture whose key names a
  PyTorch VAE / umT5 checkpoint is read by (default: the checkpoint's own, `checkpoint_config`). Prints
  one line saying what it loaded. A mismatch with `target` raises one ValueError listing missing /
  unexpected keys and shapes.
  """
  fmt = checkpoint_format(src)
  want = {k: tuple(v.shape) for k, v in _flat(target).items()}
  if fmt == "converted":
    import orbax.checkpoint as ocp

    kind = _converted_meta(src, kind)["kind"]
    path = _local_or_gcs(src) / "params"
    with ocp.StandardCheckpointer() as ckpt:
      tree = ckpt.metadata(path).item_metadata.tree
      check_match(src, {k: tuple(m.shape) for k, m in _flat(tree, lambda x: hasattr(x, "shape")).items()}, want)
      out = ckpt.restore(path, target)
    what = "converted Orbax checkpoint"
  else:
    kind = kind or _kind_of(target)
    _check_kind(kind)
    arrays, layout = pytorch_arrays(src, kind, cfg)
    check_match(src, {k: np.shape(v) for k, v in arrays.items()}, want)
    flat_target = _flat(target)

    def put(path, leaf):
      key = ".".join(_key(k) for k in path)
      host = host_weight(src, key, arrays[key], flat_target[key].dtype)
      sharding = getattr(leaf, "sharding", None)
      return jax.device_put(host, sharding) if sharding is not None else jnp.asarray(host)

    out = jax.tree_util.tree_map_with_path(put, target)
    what = f"PyTorch checkpoint ({layout} layout)"
  print(f"loaded {kind} weights from {what}: {src}", flush=True)
  return out


def load_params(src: str, model: nnx.Module, kind: str | None = None) -> None:
  """Restores checkpoint `src` (converted or PyTorch, see `restore_params`, read by `model.cfg`) into
  `model`'s base parameters, keeping each array's sharding."""
  state = nnx.state(model, BASE_PARAMS)

  def abstract(x):
    sharding = x.sharding if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = jax.tree.map(abstract, state.to_pure_dict())
  nnx.replace_by_pure_dict(state, restore_params(src, target, kind, model.cfg))
  nnx.update(model, state)


def from_checkpoint(src: str, kind: str, **config_overrides) -> nnx.Module:
  """A model built from the checkpoint's own config (plus overrides such as dtype) with its weights."""
  from microverse_jax.models.umt5 import UMT5Encoder
  from microverse_jax.models.wan_dit import WanDiT
  from microverse_jax.models.wan_vae import WanVAE

  cfg = checkpoint_config(src, kind, **config_overrides)
  model = _build({"dit": WanDiT, "vae": WanVAE, "umt5": UMT5Encoder}[kind], cfg)
  load_params(src, model, kind)
  return model


# ---------------------------------------------------------------------------------------------
# LoRA files (DiffSynth / MicroVerse training outputs, diffusers, ComfyUI)
# ---------------------------------------------------------------------------------------------
_STEP_FILE = re.compile(r"^(?:step|epoch)-(\d+)\.safetensors$")


def latest_lora(directory: str) -> str:
  """The `step-N.safetensors` (or `epoch-N`) with the highest N in `directory` (step-10 beats step-9);
  a directory holding a single .safetensors file gives that file."""
  names = os.listdir(directory)
  steps = [(int(m.group(1)), n) for n in names if (m := _STEP_FILE.match(n))]
  if steps:
    return os.path.join(directory, max(steps)[1])
  files = sorted(n for n in names if n.endswith(".safetensors"))
  if len(files) == 1:
    return os.path.join(directory, files[0])
  raise FileNotFoundError(
    f"{directory}: no step-N.safetensors LoRA file"
    + (f" and several other .safetensors files {files}: name one" if files else "")
  )


def load_lora(src: str, model: nnx.Module, *, strict: bool = True) -> str:
  """Loads a PEFT-named LoRA file into WanDiT `model` (see `lora.peft_to_lora` for the key names
  and scale): into its LoRA params, or merged into the base kernels if it has none. `src`: a
  .safetensors file, or a directory of training outputs (the highest step-N). Returns the file read."""
  from microverse_jax.models import lora

  if os.path.isdir(src):
    src = latest_lora(src)
  elif not os.path.exists(src):
    raise FileNotFoundError(
      f"{src}: no such LoRA file; expected a .safetensors file of PEFT LoRA weights "
      "(DiffSynth/MicroVerse step-N.safetensors, diffusers or ComfyUI) or a directory of them"
    )
  try:
    factors = lora.peft_to_lora(read_checkpoint(src), model.cfg.num_layers)
  except ValueError as e:
    raise _prefixed(src, e) from None
  lora.set_lora(model, factors, src, strict=strict)
  how = "into the LoRA params" if model.cfg.lora_rank else "merged into the base kernels"
  print(f"loaded LoRA ({len(factors)} modules x {model.cfg.num_layers} blocks) {how}: {src}", flush=True)
  return src


def parser():
  """The command line of `python -m microverse_jax.convert`."""
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  p = cli.argument_parser(__doc__, "python -m microverse_jax.convert")
  p.add_argument("kind", choices=KINDS, help="which model: the DiT, the Wan-VAE or the umT5 text encoder")
  p.add_argument(
    "--src",
    required=True,
    metavar="PATH",
    help="source checkpoint: a diffusers/transformers "
    "directory, an original Wan2.1 / DiffSynth .pth or .safetensors file, or a converted directory",
  )
  p.add_argument(
    "--out",
    "--dst",
    dest="out",
    required=True,
    metavar="DIR",
    help="output directory (Orbax checkpoint + config.json); --dst: old spelling",
  )
  return p


def main(argv=None) -> None:
  from microverse_jax import files  # pylint: disable=g-import-not-at-top

  args = parser().parse_args(argv)
  files.require_kind(args.out, (None, "checkpoint"), "--out")  # before any weight is read
  files.check_apart(args.out, args.src, "--out", "the --src checkpoint")
  print(f"converting {args.kind} from {args.src} ...", flush=True)
  model = from_checkpoint(args.src, args.kind)
  save_params(model, args.out, args.kind)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, BASE_PARAMS)))
  print(f"wrote {n:,} parameters to {args.out}", flush=True)


if __name__ == "__main__":
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  cli.main_guard(main)
