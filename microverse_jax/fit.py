"""What fits where: search remat policies x meshes x per-device batch for TPU topologies, ahead of time.

  python -m microverse_jax.fit --config=configs/wan2_1.py:14b,lora --topology=v5p-8,v6e-8 [--policies=...]
      [--meshes=8x1x1,4x2x1] [--batches=1,2] [--first] [--cache=fit.json] [--hbm_fraction=0.9]

Each combination is the config with these overrides (aot.py compiles it for the topology on this host):
  model.remat_policy   a name of the menu (models/wan_dit.py, REMAT_POLICIES)
  mesh.{data,fsdp,tensor,context} = 1, F, T, C with F x T x C = the topology's devices, and the model's
                       heads divisible by T x C (tensor splits the heads; Ulysses splits them again over context)
  data.batch_size      b x F x optim.grad_accum: b clips per device and micro-batch
Results are cached per combination in a JSON file (key: the resolved config, topology and JAX version),
written whole (a temporary file, then a rename), so a search resumes where it stopped. A combination whose
arguments alone (parameters, optimizer state, batch) exceed HBM is not compiled; a larger batch is not
tried once a smaller one does not fit.

Roofline (per device, from the compiled program): FLOPs are the HLO's matmuls and convolutions and our
Pallas flash-attention kernels (by their operand shapes), each times the trip count of the loops around it
(XLA's cost_analysis counts a scanned layer once and no Pallas kernel); HBM bytes are the operands and
results of every top-level op, times the same counts. Step time = max(FLOPs / peak, bytes / HBM bandwidth)
(tpu_specs' table); collectives over ICI and host transfers (offload) are not counted. MFU = the model's
FLOPs (3 x forward, microverse_jax.flops) / (devices x peak x step time). The fastest combination that fits
is the one with the least roofline time per clip.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import tempfile
import time
from typing import Callable, Iterable, Sequence

import jax
from absl import flags
from ml_collections import config_flags

from microverse_jax import aot, cli, plans
from microverse_jax.models.wan_dit import REMAT_POLICIES

DEFAULT_CACHE = "~/.cache/microverse_jax/fit.json"
BATCHES = (1, 2, 4, 8)
# FLOPs of our Pallas flash-attention kernels (kernels/attention/flash_tpu.py) per q element per key:
# forward QK^T + PV; dk/dv recompute QK^T, then dV, dP, dK; dq recomputes QK^T, then dP, dQ.
KERNEL_FLOPS = {"flash_attention_fwd": 4, "flash_attention_dkdv": 8, "flash_attention_dq": 6}


@dataclasses.dataclass(frozen=True)
class Combo:
  policy: str
  fsdp: int
  tensor: int = 1
  context: int = 1
  batch: int = 1  # clips per device and micro-batch

  def overrides(self, grad_accum: int = 1) -> list[str]:
    """The --config. flags that select this combination."""
    return [
      f"--config.model.remat_policy={self.policy}",
      "--config.mesh.data=1",
      f"--config.mesh.fsdp={self.fsdp}",
      f"--config.mesh.tensor={self.tensor}",
      f"--config.mesh.context={self.context}",
      f"--config.data.batch_size={self.batch * self.fsdp * grad_accum}",
    ]

  def apply(self, c):
    c = c.copy_and_resolve_references()
    with c.unlocked():
      c.model.remat_policy = self.policy
      c.mesh.update(data=1, fsdp=self.fsdp, tensor=self.tensor, context=self.context)
      c.data.batch_size = self.batch * self.fsdp * c.optim.grad_accum
    return c


def meshes(devices: int, num_heads: int) -> list[tuple[int, int, int]]:
  """(fsdp, tensor, context) with fsdp x tensor x context = devices and num_heads % (tensor x context) == 0,
  pure FSDP first."""
  out = [
    (devices // (t * c), t, c)
    for t, c in itertools.product(range(1, devices + 1), repeat=2)
    if devices % (t * c) == 0 and num_heads % (t * c) == 0
  ]
  return sorted(out, key=lambda m: (m[1] * m[2], m[2]))


# ============================================================================ the roofline from the HLO
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "conditional", "call"}
_FREE |= {"after-all", "opt-barrier", "partition-id", "replica-id", "iota"}


def _arrays(text: str) -> list[tuple[int, list[int]]]:
  """(bytes per element, dims) of each array type in `text`."""
  out = []
  for dtype, dims in _SHAPE.findall(text):
    size = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}.get(dtype) or max(1, int(re.sub(r"\D", "", dtype) or 8) // 8)
    out.append((size, [int(d) for d in dims.split(",") if d]))
  return out


def _split_type(rest: str) -> tuple[str, str, str]:
  """'f32[2]{0} add(%a, %b), ...' -> (type text, op, the text after the op's opening parenthesis)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        break
    typ, rest = rest[: i + 1], rest[i + 1 :]
  else:
    typ, _, rest = rest.partition(" ")
  m = re.match(r"\s*([\w\-]+)\((.*)$", rest)
  return (typ, m.group(1), m.group(2)) if m else (typ, "", rest)


def _nbytes(arrays) -> int:
  return sum(s * math.prod(d) for s, d in arrays)


def _parse(hlo: str):
  """(multiplicity, {name: arrays}, [(computation, name, op, args, operand arrays, is_root)], fused names)."""
  comps, mult = aot.multiplicity(hlo)
  shapes, parsed, fused = {}, [], set()
  for comp, lines in comps.items():
    for line in lines:
      m = _INSTR.match(line)
      if m:
        typ, op, args = _split_type(m.group(2))
        shapes[m.group(1)] = _arrays(typ)
        parsed.append([comp, m.group(1), op, args, line.lstrip().startswith("ROOT")])
        if op == "fusion":
          fused.update(re.findall(r"calls=%?([\w.\-]+)", args))
  for row in parsed:
    row.insert(4, [shapes.get(o, []) for o in re.findall(r"%([\w.\-]+)", row[3].split("),")[0])])
  return mult, shapes, parsed, fused


def _in_place(parsed, shapes) -> dict[str, tuple[dict[int, int], int | None]]:
  """Per fused computation: (parameter index -> bytes it really reads when only sliced, the bytes its root
  writes when it is a dynamic-update-slice into a parameter); a scan's stacked buffers are read and
  written a slice at a time."""
  out: dict[str, tuple[dict[int, int], int | None]] = {}
  params: dict[str, int] = {}
  for comp, name, op, args, operands, root in parsed:
    reads, write = out.setdefault(comp, ({}, None))
    first = (re.findall(r"%([\w.\-]+)", args.split("),")[0]) or [None])[0]
    if op == "parameter":
      params[name] = int(re.match(r"(\d+)", args).group(1))
    elif op == "dynamic-slice" and first in params:
      reads[params[first]] = reads.get(params[first], 0) + _nbytes(shapes[name])
    elif op == "dynamic-update-slice" and root and first in params and len(operands) > 1:
      reads[params[first]] = 0
      out[comp] = (reads, _nbytes(operands[1]))
  return out


def hlo_cost(hlo: str) -> dict:
  """Per-device {flops, bytes} of a compiled program's HLO text, each op times the runs of its computation
  (aot.multiplicity: while loops x trip count); uncounted_kernels: custom kernels of unknown FLOPs."""
  mult, shapes, parsed, fused = _parse(hlo)
  in_place = _in_place([r for r in parsed if r[0] in fused], shapes)
  flops = hbm = 0.0
  uncounted = 0
  for comp, name, op, args, operands, _ in parsed:
    n = mult.get(comp, 0)
    if not n:
      continue
    out = sum(math.prod(d) for _, d in shapes[name])
    if op == "dot" and operands and operands[0]:
      lhs = operands[0][0][1]
      contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", args)
      k = math.prod(lhs[int(i)] for i in contract.group(1).split(",") if i) if contract else 1
      flops += n * 2 * out * k
    elif op == "convolution" and len(operands) > 1 and operands[1]:
      labels = re.search(r"dim_labels=\w+_(\w+)->", args)
      rhs = operands[1][0][1]
      k = math.prod(s for s, l in zip(rhs, labels.group(1)) if l != "o") if labels else 1
      flops += n * 2 * out * k
    elif op == "custom-call" and 'custom_call_target="tpu_custom_call"' in args:
      kernel = next((k for k in KERNEL_FLOPS if name.startswith(k)), None)
      found = re.search(r"operand_layout_constraints=\{(.*?)\}\s*,\s*\w+=", args)
      layout = _arrays(found.group(1)) if found else []
      if kernel and len(layout) > 1:
        flops += n * KERNEL_FLOPS[kernel] * math.prod(layout[0][1]) * layout[1][1][-2]
      else:
        uncounted += 1
    if comp in fused or op in _FREE:
      continue
    if op == "dynamic-update-slice" and len(operands) > 1:
      hbm += n * 2 * _nbytes(operands[1])
    elif op == "dynamic-slice":
      hbm += n * 2 * _nbytes(shapes[name])
    elif op == "fusion":
      callee = (re.findall(r"calls=%?([\w.\-]+)", args) or [""])[0]
      reads, write = in_place.get(callee, ({}, None))
      hbm += n * (_nbytes(shapes[name]) if write is None else write)
      hbm += n * sum(reads.get(i, _nbytes(o)) for i, o in enumerate(operands))
    else:
      hbm += n * (_nbytes(shapes[name]) + sum(_nbytes(o) for o in operands))
  return {"flops": flops, "bytes": hbm, "uncounted_kernels": uncounted}


def roofline(info: dict, topology: aot.Topology, devices: int) -> dict:
  """Step time, MFU and time per clip of a report with hlo_flops / hlo_bytes."""
  t = max(info["hlo_flops"] / topology.peak_flops, info["hlo_bytes"] / topology.hbm_bandwidth)
  return {
    "roofline_s": t,
    "bound": "compute"
    if info["hlo_flops"] / topology.peak_flops >= info["hlo_bytes"] / topology.hbm_bandwidth
    else "HBM",
    "mfu": info["model_flops_per_step"] / (devices * topology.peak_flops * t) if t else float("nan"),
    "s_per_clip": t / info["global_batch"],
  }


# ============================================================================ the cache
class Cache:
  """{key: record} in a JSON file; every put re-reads the file under a lock and replaces it whole."""

  def __init__(self, path: str | None):
    self.path = path and os.path.expanduser(path)
    self.data = self._read() if path else {}

  def _read(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return {}

  def get(self, key: str) -> dict | None:
    return self.data.get(key)

  def put(self, key: str, record: dict) -> None:
    self.data[key] = record
    if not self.path:
      return
    folder = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(folder, exist_ok=True)
    with open(self.path + ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      self.data = {**self._read(), key: record}
      fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fit-", suffix=".json")
      with os.fdopen(fd, "w") as f:
        json.dump(self.data, f, indent=1, sort_keys=True)
      os.replace(tmp, self.path)


def cache_key(c, topology: aot.Topology) -> str:
  text = json.dumps([c.to_json_best_effort(sort_keys=True), topology.name, jax.__version__])
  return hashlib.sha256(text.encode()).hexdigest()[:24]


# ============================================================================ one combination
_OOM = re.compile(r"RESOURCE_EXHAUSTED|out of memory|exceed.*(memory|hbm)|hbm.*exceed", re.I)


def _error(e: Exception) -> str:
  """The line of a compile error that says what happened: one about memory if any, else the last one that
  is not a link to the error's page."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip() and not l.strip().startswith("See http")]
  line = next((l for l in lines if _OOM.search(l)), lines[-1] if lines else type(e).__name__)
  return line[:400]


def evaluate(c, topology: aot.Topology, hbm_bytes: float) -> dict:
  """Compiles config `c` for `topology`; its record: memory, HLO FLOPs and bytes, roofline. `skipped` when
  the arguments alone exceed hbm_bytes per device (not compiled); `error` when it does not compile."""
  record = {"global_batch": c.data.batch_size, "hbm_bytes": topology.hbm_bytes}
  try:
    _, args, shape, *_ = aot.train_program(c, topology)
    record.update(mesh=dict(shape), devices=math.prod(shape.values()), argument_bytes=aot.argument_bytes(args))
    if record["argument_bytes"] > hbm_bytes:
      return {**record, "skipped": "its arguments alone exceed HBM"}
    compiled, info = aot.compile_train_step(c, topology)
    cost = hlo_cost(compiled.as_text())
  except Exception as e:  # a combination XLA or the model rejects (an HBM overflow, a shape)
    error = _error(e)
    return {**record, "error": error, **({"oom": True} if _OOM.search(error) else {})}
  info.pop("fits")
  record.update(info, hlo_flops=cost["flops"], hlo_bytes=cost["bytes"], uncounted_kernels=cost["uncounted_kernels"])
  record.update(roofline(record, topology, record["devices"]))
  return record


def fits(record: dict, hbm_bytes: float) -> bool:
  return "total_bytes" in record and record["total_bytes"] <= hbm_bytes


# ============================================================================ the search
@dataclasses.dataclass
class Result:
  topology: str  # as the user named it: v5p-8
  combo: Combo
  record: dict


def _label(spec: str, k: Combo) -> str:
  return f"{spec} {k.policy} fsdp={k.fsdp} tensor={k.tensor} context={k.context} batch={k.batch}"


def _status(record: dict, hbm: float) -> str:
  if "total_bytes" in record:
    gib = record["total_bytes"] / 2**30
    return f"{'fits' if fits(record, hbm) else 'does not fit'}: {gib:.2f} GiB, roofline {record['roofline_s']:.3g} s"
  if record.get("oom"):
    return f"does not fit (the compiler ran out of HBM: {record['error']})"
  return record.get("skipped") or f"does not compile: {record.get('error')}"


class Planner:
  """Evaluates combinations through the cache, printing progress (N/M, elapsed) with `log`."""

  def __init__(self, c, cache_path: str | None = DEFAULT_CACHE, hbm_fraction: float = 1.0, log: Callable = print):
    self.c, self.cache, self.hbm_fraction, self.log = c, Cache(cache_path), hbm_fraction, log
    self.start, self.done, self.total = time.time(), 0, 0

  def hbm(self, topology: aot.Topology) -> float:
    return topology.hbm_bytes * self.hbm_fraction

  def record(self, c, spec: str, label: str) -> dict:
    topology = aot.parse_topology(spec)
    key = cache_key(c, topology)
    record, cached = self.cache.get(key), True
    if record is None or ("skipped" in record and record["argument_bytes"] <= self.hbm(topology)):
      record, cached = evaluate(c, topology, self.hbm(topology)), False
      if "error" not in record or record.get("oom"):  # other errors may be this host's: retried
        self.cache.put(key, {**record, "label": label})
    self.done += 1
    elapsed = time.time() - self.start
    done = f"{self.done}/{self.total}" if self.total else f"{self.done}"
    self.log(f"[{done} {elapsed:.0f}s] {label}: {_status(record, self.hbm(topology))}" + (" (cached)" * cached))
    return record

  def search(self, specs: Sequence[str], policies=None, mesh_list=None, batches: Iterable[int] = BATCHES, first=False):
    """Every (topology, mesh, policy, batch) in that order; a batch larger than one that did not fit is not
    tried; first: a topology's search stops at its first combination that fits."""
    heads = plans.dit_config(self.c).num_heads
    policies, batches = list(policies or REMAT_POLICIES), sorted(batches)
    todo = []
    for spec in specs:
      devices = len(aot.topology_devices(aot.parse_topology(spec)))
      valid = meshes(devices, heads)
      chosen = [m for m in mesh_list if m in valid] if mesh_list else valid
      if not chosen:
        raise ValueError(f"--meshes: none of {mesh_list} is a mesh of {devices} devices of {spec}: {valid}")
      todo += [(spec, Combo(p, f, t, cx, b)) for f, t, cx in chosen for p in policies for b in batches]
    self.total += len(todo)
    results, too_big, found = [], set(), set()
    for spec, k in todo:
      group = (spec, k.policy, k.fsdp, k.tensor, k.context)
      if group in too_big or spec in found:
        self.done += 1
        continue
      record = self.record(k.apply(self.c), spec, _label(spec, k))
      results.append(Result(spec, k, record))
      if not fits(record, self.hbm(aot.parse_topology(spec))):
        too_big.add(group)
      elif first:
        found.add(spec)
    return results

  def best(self, results: Sequence[Result], spec: str) -> Result | None:
    hbm = self.hbm(aot.parse_topology(spec))
    ok = [r for r in results if r.topology == spec and fits(r.record, hbm)]
    return min(ok, key=lambda r: (r.record["s_per_clip"], r.record["total_bytes"]), default=None)

  def suggest(self, spec: str) -> tuple[dict, Result | None]:
    """(the config's own record, None when it fits; else the first combination that fits): other remat
    policies at its mesh and batch, then other meshes, then halved batches."""
    topology = aot.parse_topology(spec)
    own = self.record(self.c, spec, f"{spec} as configured")
    if fits(own, self.hbm(topology)) or "mesh" not in own:
      return own, None
    mesh, accum = own["mesh"], self.c.optim.grad_accum
    fsdp = mesh["data"] * mesh["fsdp"]
    batch = max(1, self.c.data.batch_size // (fsdp * accum))
    order = ("none", "dots_saveable", "save_block_outputs", "offload_block_outputs", "nothing_saveable")
    stages = [[(fsdp, mesh["tensor"], mesh["context"])], None]
    all_meshes = meshes(math.prod(mesh.values()), plans.dit_config(self.c).num_heads)
    for b in [batch] + [batch >> i for i in range(1, batch.bit_length()) if batch >> i]:
      for stage in stages:
        for f, t, cx in stage or all_meshes:
          for p in order:
            k = Combo(p, f, t, cx, b)
            if k.apply(self.c).to_dict() == self.c.to_dict():
              continue
            record = self.record(k.apply(self.c), spec, _label(spec, k))
            if fits(record, self.hbm(topology)):
              return own, Result(spec, k, record)
    return own, None


# ============================================================================ the table
def format_table(results: Sequence[Result], hbm_fraction: float = 1.0) -> str:
  gib = lambda b: f"{b / 2**30:.2f}"
  head = "topology  policy                 fsdp x tensor x context  b/dev  global  args GiB  temp GiB  host GiB"
  head += "  total/HBM GiB   fits  TFLOP/dev  roofline s  bound    MFU"
  lines = [head]
  for r in sorted(results, key=lambda r: (r.topology, r.record.get("s_per_clip", math.inf))):
    k, rec = r.combo, r.record
    mesh = f"{k.fsdp} x {k.tensor} x {k.context}"
    row = f"{r.topology:<9} {k.policy:<22} {mesh:<24} {k.batch:>5}  {rec['global_batch']:>6}"
    if "total_bytes" in rec:
      hbm = rec["hbm_bytes"] * hbm_fraction
      row += (
        f"  {gib(rec['argument_bytes']):>8}  {gib(rec['temp_bytes']):>8}  {gib(rec.get('host_bytes', 0)):>8}"
        f"  {gib(rec['total_bytes']) + '/' + gib(hbm):>13}  {'yes' if fits(rec, hbm) else 'no':>5}"
        f"  {rec['hlo_flops'] / 1e12:>9.1f}  {rec['roofline_s']:>10.3g}  {rec['bound']:<7} {rec['mfu']:>5.1%}"
      )
    else:
      row += "  " + _status(rec, 0.0)
    lines.append(row)
  return "\n".join(lines)


def summary(planner: Planner, results: Sequence[Result], specs: Sequence[str]) -> str:
  lines = []
  for spec in specs:
    best = planner.best(results, spec)
    if best is None:
      lines.append(f"{spec}: nothing searched fits")
      continue
    rec = best.record
    lines.append(
      f"{spec}: fastest that fits: {best.combo.policy}, {rec['total_bytes'] / 2**30:.2f} GiB per device, roofline "
      f"{rec['roofline_s']:.3g} s per step ({rec['global_batch']} clips), MFU {rec['mfu']:.1%}:\n  "
      + " ".join(best.combo.overrides(planner.c.optim.grad_accum))
    )
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  specs = [s.strip() for s in f.topology if s.strip()]
  mesh_list = [tuple(int(x) for x in m.split("x")) for m in f.meshes or ()]
  planner = Planner(f.config, f.cache or None, f.hbm_fraction)
  results = planner.search(specs, f.policies, mesh_list, [int(b) for b in f.batches], f.first)
  print(format_table(results, f.hbm_fraction), summary(planner, results, specs), sep="\n", flush=True)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config.", lock_config=True)
  flags.mark_flag_as_required("config")
  flags.DEFINE_list("topology", ["v5p-8"], "TPU topologies, e.g. v5p-8,v6e-8 (accelerator types or v5p:2x2x1).")
  flags.DEFINE_list("policies", None, "The remat policies to try (default: the whole menu, REMAT_POLICIES).")
  flags.DEFINE_list("meshes", None, "Meshes FSDPxTENSORxCONTEXT, e.g. 8x1x1,4x2x1 (default: every valid one).")
  flags.DEFINE_list("batches", [str(b) for b in BATCHES], "Per-device batches to try.")
  flags.DEFINE_string("cache", DEFAULT_CACHE, "The results cache, JSON ('' for none).")
  flags.DEFINE_float("hbm_fraction", 1.0, "The share of HBM a combination may use (headroom).")
  flags.DEFINE_bool("first", False, "Stop each topology's search at its first combination that fits.")
  cli.run(main)
