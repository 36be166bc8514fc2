"""The real Wan2.1 path end to end, as a user runs it (docs/real_path.md), on tiny random weights.

A tiny WanPipeline folder is written by diffusers / transformers `save_pretrained` (with a
sentencepiece tokenizer trained here, nothing downloaded); then every step runs through its real CLI
in a subprocess, exactly the docs' command with tiny sizes: convert (DiT, VAE, umT5), build
microsim10k from a manual dir of mp4 clips, encode the latent cache (from the converted dirs and from
the PyTorch folders: the same cache), train LoRA from the cache and full from raw video through the
Wan-VAE, sample the benchmark tasks from a workdir (its config.json is the config) and from the
WanPipeline folder, judge the videos with `microworldbench evaluate` against a local fake judge, and
`microworldbench aggregate`.

The default (CI) variant runs that chain (two subprocesses at a time, ~4 min on 2 cores); the
`heavy` one adds full-from-latents and LoRA-from-video training with more steps, sampling a
full-video workdir and the converted checkpoint, and judging those too.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "microworldbench"))

import real_path_chain as rp  # noqa: E402
import real_path_models  # noqa: E402
from mwb_judge_server import FakeJudge  # noqa: E402

BENCH = os.path.join(rp.REPO, "..", "shared", "microworldbench")
BENCH_FILES = ("MWBenchRubrics.json", "MWBenchRubrics_norm.json", "finaltasks.json")
DIMENSIONS = {"Scientific Accuracy": "scientific", "Visual Quality": "visual", "Instruction Following": "instruction"}
# In start order: the critical path (convert, encode, LoRA, its samples) first.
CHEAP = (
  "convert_dit",
  "convert_vae",
  "convert_umt5",
  "build",
  "encode",
  "train_lora_latents",
  "sample_lora_latents",
  "evaluate_lora_latents",
  "train_full_video",
  "sample_wan",
  "evaluate_wan",
  "aggregate",
  "encode_pytorch",
)
HEAVY = (
  "train_full_latents",
  "train_lora_video",
  "sample_full_video",
  "sample_converted",
  "evaluate_full_video",
  "evaluate_converted",
)
TASKS = (1, 2)


def task_judge(rubrics_path: str) -> FakeJudge:
  """The fake judge, told which (task, dimension) a prompt is by the task text the real rubrics put in it."""
  with open(rubrics_path, encoding="utf-8") as f:
    texts = {row["index"]: " ".join(row["task"].split())[:80] for row in json.load(f) if row["index"] in TASKS}

  def identify(prompt: str):
    flat = " ".join(prompt.split())
    index = next((i for i, text in texts.items() if text in flat), 0)
    return index, next(d for title, d in DIMENSIONS.items() if f"dimension {title}" in flat)

  return FakeJudge(identify=identify)


def _make_chain(tmp_path_factory, steps: int):
  if not all(os.path.exists(os.path.join(BENCH, f)) for f in BENCH_FILES):
    pytest.skip(f"the MicroWorldBench files {BENCH_FILES} are not in {BENCH}")
  root = tmp_path_factory.mktemp("real_path")
  paths = {v: str(root / v.lower()) for v in rp.VARIABLES if v not in ("BENCH", "JUDGE_URL")}
  paths.update(BENCH=os.path.abspath(BENCH), CACHE_PYTORCH=str(root / "cache_pytorch"))
  real_path_models.save_wan_pipeline(paths["WAN"])
  real_path_models.write_manual_dir(paths["MANUAL"])
  judge = task_judge(os.path.join(BENCH, "MWBenchRubrics.json")).__enter__()
  paths["JUDGE_URL"] = judge.url
  chain = rp.Chain(paths, steps=steps, env={"MICROWORLDBENCH_API_KEY": "sk-fake-judge"})
  return chain, judge


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  chain, judge = _make_chain(tmp_path_factory, rp.TRAIN_STEPS)
  chain.start(*CHEAP)
  yield chain
  chain.close()
  judge.__exit__(None, None, None)


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _check_videos(folder: str, tasks=TASKS, frames: int = rp.TINY["frames"]) -> None:
  from microverse_jax import video

  for i in tasks:
    with open(os.path.join(folder, f"{i}.mp4"), "rb") as f:
      info = video.probe(f.read())
    assert (info.num_frames, info.height, info.width) == (frames, rp.TINY["height"], rp.TINY["width"]), info


def _check_training(chain, name: str, lora: bool, steps: int):
  out = chain.result(name).stdout
  workdir = os.path.join(chain.paths["RUNS"], name[len("train_") :])
  rows = _metrics(workdir)
  assert [r["step"] for r in rows][-1] == steps and all(math.isfinite(r["loss"]) for r in rows), rows
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps)))
  saved = json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))
  assert saved["init_from"] == os.path.join(chain.paths["CKPT"], "dit")
  assert (saved["model"]["lora_rank"] > 0) == lora
  assert f"loaded dit weights from converted Orbax checkpoint: {chain.paths['CKPT']}/dit" in out
  return rows


def _check_evaluate(chain, name: str) -> None:
  step = chain.result("evaluate_" + name)
  with open(os.path.join(chain.paths["OUT"], f"{name}_result.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert sorted(r["index"] for r in results) == list(TASKS), step.stdout
  for r in results:
    for d in DIMENSIONS.values():
      assert r["status"][d]["state"] == "scored", (r["index"], d, r["status"][d])
      assert r[f"{d}_eval"]["parsed_result"]["scores"], r[f"{d}_eval"]


# ---------------------------------------------------------------------------------------------
# The default chain
# ---------------------------------------------------------------------------------------------
def test_convert(chain):
  for kind, src in (("dit", "transformer"), ("vae", "vae"), ("umt5", "text_encoder")):
    out = chain.result(f"convert_{kind}").stdout
    layout = "transformers" if kind == "umt5" else "diffusers"
    assert f"loaded {kind} weights from PyTorch checkpoint ({layout} layout)" in out, out
    meta = json.load(open(os.path.join(chain.paths["CKPT"], kind, "config.json"), encoding="utf-8"))
    assert meta["kind"] == kind and os.path.isdir(os.path.join(chain.paths["CKPT"], kind, "params"))
  dit = json.load(open(os.path.join(chain.paths["CKPT"], "dit", "config.json"), encoding="utf-8"))["config"]
  assert (dit["num_layers"], dit["text_dim"], dit["in_channels"]) == (2, real_path_models.TEXT_DIM, 4)


def test_build_microsim10k(chain):
  out = chain.result("build").stdout
  summary = json.loads(out.strip().splitlines()[-1])
  assert sum(summary["splits"].values()) == 6 and summary["skipped"] == 0, out
  from microverse_jax import input_pipeline

  train = input_pipeline.load_source("microsim10k", "train", chain.paths["DATA"])
  assert len(train) == summary["splits"]["train"] >= 4


def test_encode_either_format_gives_the_same_cache(chain):
  converted, pytorch = chain.result("encode"), chain.result("encode_pytorch")
  assert "loaded vae weights from converted Orbax checkpoint" in converted.stdout, converted.stdout
  assert "loaded umt5 weights from converted Orbax checkpoint" in converted.stdout
  assert "loaded vae weights from PyTorch checkpoint (diffusers layout)" in pytorch.stdout, pytorch.stdout
  assert "loaded umt5 weights from PyTorch checkpoint (transformers layout)" in pytorch.stdout
  from microverse_jax import input_pipeline

  a = input_pipeline.load_source("microsim10k_latents", "train", chain.paths["CACHE"])
  b = input_pipeline.load_source("microsim10k_latents", "train", chain.paths["CACHE_PYTORCH"])
  source = input_pipeline.load_source("microsim10k", "train", chain.paths["DATA"])
  assert len(a) == len(b) == len(source) and a.dataset_info.metadata["text_length"] == 512
  for i in range(len(a)):
    ra, rb = a[i], b[i]
    assert ra["id"] == rb["id"] and ra["latents"].shape == (5, 8, 8, 4)  # 9 frames of 32x32: (1 + 8/2, 32/4, 32/4, 4)
    assert ra["context"].shape[1] == real_path_models.TEXT_DIM
    np.testing.assert_allclose(ra["latents"].astype(np.float32), rb["latents"].astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(ra["context"].astype(np.float32), rb["context"].astype(np.float32), atol=2e-2)


def test_train_lora_from_latents_and_full_from_video(chain):
  lora = _check_training(chain, "train_lora_latents", lora=True, steps=rp.TRAIN_STEPS)
  full = _check_training(chain, "train_full_video", lora=False, steps=rp.TRAIN_STEPS)
  video_out = chain.result("train_full_video").stdout
  assert "loaded vae weights from converted Orbax checkpoint" in video_out  # the Wan-VAE on the fly
  assert "loaded umt5 weights from converted Orbax checkpoint" in video_out
  # Same base weights (LoRA's B starts at zero), seed and clips: the first loss is the same whether
  # the clips were encoded on the fly or read from the bf16 cache.
  assert lora[0]["loss"] == pytest.approx(full[0]["loss"], rel=0.05), (lora[0], full[0])


def test_sample_from_workdir_and_from_wan_pipeline_folder(chain):
  workdir = chain.result("sample_lora_latents").stdout
  assert f"loaded step {rp.TRAIN_STEPS} of {chain.paths['RUNS']}/lora_latents" in workdir, workdir
  assert "seeded random" not in workdir  # base and encoders from the workdir's config.json
  _check_videos(os.path.join(chain.paths["OUT"], "lora_latents"))
  pipe = chain.result("sample_wan").stdout
  for kind, part in (("dit", "transformer"), ("umt5", "text_encoder"), ("vae", "vae")):
    assert f"loaded {kind} weights from PyTorch checkpoint" in pipe and f"{chain.paths['WAN']}/{part}" in pipe, pipe
  _check_videos(os.path.join(chain.paths["OUT"], "wan"))


def test_evaluate_and_aggregate(chain):
  _check_evaluate(chain, "lora_latents")
  _check_evaluate(chain, "wan")
  out = chain.result("aggregate").stdout
  assert "microverse-lora" in out and "wan2.1" in out, out
  assert os.path.exists(os.path.join(chain.paths["OUT"], "report.md"))


def test_docs_show_the_commands_the_test_runs():
  with open(os.path.join(rp.REPO, "docs", "real_path.md"), encoding="utf-8") as f:
    docs = rp.normalized(f.read())
  for name in rp.COMMANDS:
    if name != "encode_pytorch":
      assert rp.normalized(rp.shown(name)) in docs, f"docs/real_path.md does not show {name}: {rp.shown(name)}"


# ---------------------------------------------------------------------------------------------
# Heavy: the other two training modes, more steps, the other sampling sources
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heavy_chain(tmp_path_factory):
  chain, judge = _make_chain(tmp_path_factory, 4)
  chain.start(*CHEAP, *HEAVY)
  yield chain
  chain.close()
  judge.__exit__(None, None, None)


@pytest.mark.heavy
def test_heavy_every_mode_and_source(heavy_chain):
  chain = heavy_chain
  for name in ("train_lora_latents", "train_full_latents", "train_lora_video", "train_full_video"):
    rows = _check_training(chain, name, lora="lora" in name, steps=4)
    assert len(rows) >= 1
  for name in ("lora_latents", "full_video", "wan", "converted"):
    chain.result(f"sample_{name}")
    _check_videos(os.path.join(chain.paths["OUT"], name))
    _check_evaluate(chain, name)
  converted = chain.result("sample_converted").stdout
  for kind in ("dit", "umt5", "vae"):
    assert f"loaded {kind} weights from converted Orbax checkpoint: {chain.paths['CKPT']}/{kind}" in converted
  assert "microverse-lora" in chain.result("aggregate").stdout
