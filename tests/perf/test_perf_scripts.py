"""The bench/perf training-step, scaling, sampling and run-all scripts run end to end at tiny sizes.

No timing assertions: these check that each script measures what it says (the right model FLOPs,
both implementations, finite losses and latents, written tables and plots).
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from microverse_jax import flops
from microverse_jax.models.wan_dit import WanDiT

PERF = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "perf")


def _load(name):
  if PERF not in sys.path:
    sys.path.insert(0, PERF)
  spec = importlib.util.spec_from_file_location(f"perf_{name}", os.path.join(PERF, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_train_step_against_torch(tmp_path):
  ts = _load("train_step")
  out = tmp_path / "rows.json"
  rows = ts.main(["--sizes=tiny", "--repeats=1", "--no-peak", f"--json={out}"])
  (row,) = rows
  cfg, fhw, text_len, batch = ts.model_config("tiny")
  assert row["model_gflop"] == pytest.approx(flops.train_step_flops(cfg, batch, fhw, text_len) / 1e9)
  assert row["tokens"] == 3 * 4 * 4
  for name in ("ours", "torch"):
    assert row[f"{name}_s"] > 0 and np.isfinite(row[f"{name}_gflops"])
  assert row["speedup_vs_torch"] == pytest.approx(row["torch_s"] / row["ours_s"])
  assert json.loads(out.read_text())["rows"][0]["size"] == "tiny"


def test_train_step_config_matches_issue_flops():
  """The CPU perf config is the issue's: about 56 GFLOP per training step."""
  ts = _load("train_step")
  cfg, fhw, text_len, batch = ts.model_config("base")
  assert (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.ffn_dim, cfg.text_dim) == (6, 6, 64, 1536, 256)
  assert flops.train_step_flops(cfg, batch, fhw, text_len) / 1e9 == pytest.approx(56, rel=0.02)


def test_train_step_variants_are_timed_beside_ours():
  """--variant: ours again with a model field or a per-executable XLA option, interleaved (an A/B)."""
  ts = _load("train_step")
  variants = ["--variant=remat_policy=none", "--variant=xla_cpu_enable_fast_math=false"]
  (row,) = ts.main(["--sizes=tiny", "--repeats=1", "--no-torch", "--no-peak", *variants])
  for name in ("ours[remat_policy=none]", "ours[xla_cpu_enable_fast_math=False]"):
    assert row[f"{name}_s"] > 0 and row[f"{name}_vs_ours"] == pytest.approx(row["ours_s"] / row[f"{name}_s"])


def test_dot_layouts_times_every_layout_and_matmul():
  out = _load("dot_layouts").main(["--tokens=8", "--shapes=16x32", "--repeats=1"])
  assert set(out) == {"16x32"}
  assert set(out["16x32"]) == {f"{l}/{m}" for l in ("io", "oi") for m in ("forward", "dx", "dW")}
  assert all(v > 0 and np.isfinite(v) for v in out["16x32"].values())


def test_dot_layouts_products_are_the_dense_layers_matmuls():
  from jax import lax

  dl = _load("dot_layouts")
  rng = np.random.default_rng(0)
  x, dy, w_io = rng.standard_normal((8, 16)), rng.standard_normal((8, 32)), rng.standard_normal((16, 32))
  operands = {"x": x, "dy": dy}
  want = {"forward": x @ w_io, "dx": dy @ w_io.T, "dW": x.T @ dy}
  for (layout, name), ((a, b), dims) in dl.PRODUCTS.items():
    w = w_io if layout == "io" else w_io.T
    got = np.asarray(lax.dot_general(*(w if v == "w" else operands[v] for v in (a, b)), dims))
    expected = want[name] if layout == "io" or name != "dW" else want[name].T  # oi stores dW as (N, K)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_fused_projections_step_equals_the_models():
  """The fused QKV / KV A/B times the same computation: equal first losses at the tiny size."""
  out = _load("fused_projections").main(["--size=tiny", "--repeats=1"])
  assert out["first_loss"]["fused"] == pytest.approx(out["first_loss"]["separate"], rel=1e-5)
  assert out["fused_vs_separate"] == pytest.approx(out["separate_s"] / out["fused_s"])


def test_bench_threads_pins_the_process_to_that_many_cores():
  """XLA:CPU has no thread-count flag; BENCH_THREADS=1 must still bind it (and torch) to one core."""
  code = "import os, train_step; print(len(os.sched_getaffinity(0)), train_step.THREADS)"
  env = {**os.environ, "BENCH_THREADS": "1", "PYTHONPATH": PERF}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  assert out.stdout.split()[-2:] == ["1", "1"], out.stderr


def test_train_step_rejects_bad_override():
  ts = _load("train_step")
  with pytest.raises(ValueError, match="no_such_field"):
    ts.main(["--sizes=tiny", "--no-torch", "--no-peak", "--override=no_such_field=1"])
  with pytest.raises(ValueError, match="unknown size"):
    ts.model_config("huge")


def test_train_step_ours_learns():
  """Repeated steps of the benchmarked step lower the loss on a fixed batch (it is a real step)."""
  ts = _load("train_step")
  cfg, fhw, text_len, batch = ts.model_config("tiny")
  run = ts.make_ours(cfg, fhw, text_len, batch)
  losses = [run() for _ in range(12)]
  assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_scaling_measures_one_point():
  sc = _load("scaling")
  row = sc.measure("tiny", 1, frames=1)
  cfg, _, text_len, batch = _load("train_step").model_config("tiny")
  assert row["tokens"] == 16 and row["dim"] == 32 and row["step_s"] > 0
  assert row["model_gflop"] == pytest.approx(flops.train_step_flops(cfg, batch, (1, 8, 8), text_len) / 1e9)
  # At least the fp32 params, their gradients and AdamW's two moments.
  num_params = sum(np.size(x) for x in jax.tree.leaves(nnx.state(WanDiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  assert row["peak_bytes"] >= 4 * 4 * num_params


def test_scaling_table_and_plot_from_points(tmp_path, monkeypatch):
  """The sweep, fits, table and PNG, on synthetic points (time ~ T^1.5, memory ~ T)."""
  sc = _load("scaling")

  def fake(size, repeats, frames=5, num_heads=6):
    tokens, dim = frames * 64, num_heads * 64
    return {
      "frames": frames,
      "tokens": tokens,
      "dim": dim,
      "step_s": 1e-4 * tokens**1.5 * dim**2 / 384**2,
      "peak_bytes": 1000 * tokens * dim,
      "model_gflop": 1e-3 * tokens * dim,
    }

  monkeypatch.setattr(sc, "measure", fake)
  result = sc.main(["--frames=1,2,4", "--heads=2,4", f"--out={tmp_path}"])
  assert result["exponents"]["frames"]["time"] == pytest.approx(1.5)
  assert result["exponents"]["width"]["memory"] == pytest.approx(1.0)
  assert (tmp_path / "scaling.png").stat().st_size > 1000
  table = (tmp_path / "scaling.md").read_text()
  assert "| fitted exponent | 1.50 | 1.00 | 1.00 | |" in table and "| 256 |" in table


@pytest.mark.heavy
def test_scaling_writes_table_and_plot(tmp_path):
  sc = _load("scaling")
  result = sc.main(["--size=tiny", "--frames=1,3", "--heads=1,2", "--repeats=1", f"--out={tmp_path}"])
  frames, width = result["rows"]["frames"], result["rows"]["width"]
  assert [r["tokens"] for r in frames] == [16, 48] and [r["dim"] for r in width] == [16, 32]
  assert frames[1]["peak_bytes"] > frames[0]["peak_bytes"] and width[1]["peak_bytes"] > width[0]["peak_bytes"]
  # Model FLOPs grow linearly in tokens (attention is small here) and between E and E^2 in width.
  assert 0.9 < result["exponents"]["frames"]["flops"] < 1.2
  assert 1.0 < result["exponents"]["width"]["flops"] <= 2.0
  assert (tmp_path / "scaling.png").stat().st_size > 1000
  assert "fitted exponent" in (tmp_path / "scaling.md").read_text()


def test_fit_exponent():
  sc = _load("scaling")
  assert sc.fit_exponent([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)


def test_sampling_against_torch():
  sa = _load("sampling")
  result = sa.main(["--size=tiny", "--steps=2", "--repeats=1"])
  assert result["ours_steps_per_s"] > 0 and result["torch_steps_per_s"] > 0
  assert result["speedup_vs_torch"] == pytest.approx(result["ours_steps_per_s"] / result["torch_steps_per_s"])


def test_run_all_runs_a_subset_and_rejects_unknown(tmp_path, capsys):
  ra = _load("run_all")
  (result,) = ra.main(["--tiny", "--only=attention", f"--log_dir={tmp_path}"])  # the cheapest one
  log = open(result["log"]).read()
  assert result["rc"] == 0, log[-2000:]
  assert "xla" in log and "bench/perf/attention.py --impls=xla" in result["command"]
  assert "benchmarks: 1 ran, 0 failed" in capsys.readouterr().out
  with pytest.raises(ValueError, match="nope"):
    ra.main(["--only=nope"])
  assert set(ra.BENCHMARKS) >= {
    "train_step",
    "scaling",
    "sampling",
    "attention",
    "data_pipeline",
    "scorer",
    "vae_memory",
  }


def test_step_cache_measures_every_setting_against_the_uncached_run(capsys):
  sc = _load("step_cache")
  config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "microsim_tiny.py") + ":test"
  sc.main([f"--config={config}", "--steps=6", "--repeats=1", "--thresholds=0.0,0.5"])
  out = capsys.readouterr().out
  rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
  assert {"none", "step_cache=0.0", "step_cache=0.5", "cfg_cache"} <= set(rows)
  assert rows["step_cache=0.0"][4].strip() == "0"  # threshold 0 is the plain sampler: identical videos
  assert rows["none"][5].strip() == "inf"


def test_physics_sweep_and_the_main_job_figure(synth_data_dir, tmp_path):
  from microverse_jax import train
  from microverse_jax.configs import microsim_tiny
  from microverse_jax.datasets.microsim_synth.render import stored_rows

  c = microsim_tiny.get_config("test")
  c.data.data_dir, c.optim.ema_decay, c.train.num_steps = synth_data_dir, 0.9, 2
  captions = tuple(r["caption"] for r in stored_rows(synth_data_dir, "validation")[:3])
  c.evals.samples.update(every=2, prompts=captions)
  c.sample.steps = 2  # clips of the run's own dataset
  train.train(c, str(tmp_path / "run"))
  _load("main_job_figure").main([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'fig.png'}"])
  image = np.asarray(Image.open(tmp_path / "fig.png"))
  strips = 2 * len(c.evals.samples.prompts)  # ground truth over sample, per prompt: 16 px high, 5 frames, 2 px gaps, 3x
  assert image.shape == (3 * (16 * strips + 2 * (len(c.evals.samples.prompts) - 1)), 3 * 16 * 5, 3)
  _load("main_job_figure").main([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'g.png'}", "--guidance=1,5"])
  image = np.asarray(Image.open(tmp_path / "g.png"))  # ground truth over a strip per guidance scale, per prompt
  assert image.shape == (3 * (16 * 3 * len(captions) + 2 * (len(captions) - 1)), 3 * 16 * 5, 3)
  strip = 3 * 16  # the two guidance strips of the first prompt: the same noise, a different sample
  assert not np.array_equal(image[strip : 2 * strip], image[2 * strip : 3 * strip])
  sweep = _load("physics_sweep")
  out = tmp_path / "rows.jsonl"
  argv = [f"--workdir={tmp_path / 'run'}", "--prompts=5", "--guidance=1,3", "--steps=2", f"--out={out}"]
  rows = sweep.main(argv)
  assert [(r["weights"], r["guidance"]) for r in rows] == [("ema", 1), ("ema", 3), ("params", 1), ("params", 3)]
  assert all(0 <= r["pass"] <= 1 and r["step"] == 2 for r in rows)
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows
  rows = sweep.main([f"--workdir={tmp_path / 'run'}", "--prompts=5", "--denoise=0,0.5", "--weights=params"])
  assert [r["denoise_sigma"] for r in rows] == [0.0, 0.5] and all(0 <= r["pass"] <= 1 for r in rows)
  with pytest.raises(ValueError, match="validation prompts must not be tuned on"):
    sweep.main([f"--workdir={tmp_path / 'run'}", "--seed=0"])
  curves = _load("ideal_denoiser").main([f"--workdir={tmp_path / 'run'}", "--num_clips=3"])["x0_mse"]
  assert len(curves["network"]) == len(curves["ideal"]) and all(np.isfinite(curves["network"]))


def test_the_main_job_figure_pairs_each_caption_with_its_own_stored_clip(synth_data_dir):
  from microverse_jax import input_pipeline, video

  figure = _load("main_job_figure")
  source = input_pipeline.load_source("microsim_synth", "validation", synth_data_dir)
  for i in range(len(source)):  # stored order: shuffled, record i is not clip 44 + i
    record = source[i]
    truth = figure.ground_truth(synth_data_dir, record["caption"].decode(), 5, 16)
    np.testing.assert_array_equal(truth, video.decode_frames(record["video"], 5, height=16, width=16))


def test_ideal_denoiser_is_the_posterior_mean_and_sampling_with_it_gives_back_training_clips(synth_data_dir, tmp_path):
  ideal = _load("ideal_denoiser")
  rng = np.random.default_rng(0)
  clips = rng.uniform(-1, 1, (5, 2, 4, 4, 3)).astype(np.float32)
  x_t = rng.normal(size=(2, 2, 4, 4, 3)).astype(np.float32)
  allowed = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], bool)
  sigma = np.array([0.3, 0.8], np.float32)
  got = np.asarray(ideal.ideal_x0(x_t, sigma, clips, allowed))
  for b in range(2):  # brute force: softmax over the allowed clips of -|x_t - (1 - s) x_i|^2 / (2 s^2)
    d = np.array([np.sum((x_t[b] - (1 - sigma[b]) * x) ** 2) for x in clips]) / (2 * sigma[b] ** 2)
    w = np.where(allowed[b], np.exp(-(d - d[allowed[b]].min())), 0.0)
    np.testing.assert_allclose(got[b], np.tensordot(w / w.sum(), clips, 1), rtol=1e-4, atol=1e-5)

  config = os.path.join(PERF, "..", "..", "configs", "microsim_tiny.py") + ":test"
  plot = tmp_path / "ideal.png"
  result = ideal.main([f"--config={config}", f"--data_dir={synth_data_dir}", "--num_clips=4", f"--plot={plot}"])
  assert result["psnr_to_nearest_train_db"] > 60 and result["same_process"] == 1.0  # training clips, exactly
  assert result["physics_pass_ideal"] == result["physics_pass_ground_truth"]
  curves = result["x0_mse"]
  assert len(curves["ideal"]) == len(curves["process_mean"]) == len(ideal.SIGMAS)
  assert abs(curves["ideal"][-1] - curves["process_mean"][-1]) < 0.2 * curves["process_mean"][-1]  # s -> 1: the mean
  assert Image.open(plot).size[0] > 100


def test_overfit_one_clip_trains_on_one_clip_and_scores_its_samples(tmp_path):
  config = os.path.join(PERF, "..", "..", "configs", "microsim_tiny.py") + ":test"
  strip = tmp_path / "strip.png"
  argv = [f"--out={tmp_path}", f"--config={config}", "--steps=2", "--guidance=1,3", f"--strip={strip}"]
  result = _load("overfit_one_clip").main(argv)
  assert result["steps"] == 2 and set(result["psnr_db"]) == {1.0, 3.0}
  assert all(0 < v < 60 for v in result["psnr_db"].values())  # 2 steps: a real score, far from the clip
  assert Image.open(strip).size[1] == 3 * 3 * 16  # the clip over two samples, 16 px each at scale 3
