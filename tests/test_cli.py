"""The command-line experience: quiet by default, one-line errors, TensorBoard with samples and the
config, a batch sharded by the rules table."""

import glob
import json
import os
import struct
import subprocess
import sys

import jax
import pytest

from microverse_jax import batches, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(args, tmp_path, env_drop=("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE"), config="configs/microsim_tiny.py:test"):
  """The trainer CLI as a user runs it: no JAX_PLATFORMS set (libtpu is installed by the test extra)."""
  env = {k: v for k, v in os.environ.items() if k not in env_drop}
  cmd = [
    sys.executable,
    "-m",
    "microverse_jax.train",
    f"--config={config}",
    f"--workdir={tmp_path / 'wd'}",
    *args,
  ]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _events(logdir):
  """(tag, kind) of every summary value in a TensorBoard log folder (TFRecord framing read by hand)."""
  from tensorboardX.proto import event_pb2

  out = set()
  for path in glob.glob(os.path.join(logdir, "events*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.add((value.tag, value.WhichOneof("value")))
  return out


def test_a_four_step_run_is_quiet_and_tensorboard_gets_samples_config_and_scalars(synth_data_dir, tmp_path):
  run = _train(
    [
      f"--config.data.data_dir={synth_data_dir}",
      "--config.evals.samples.every=4",
      "--config.sample.steps=2",
      "--config.evals.physics.every=4",
      "--config.evals.physics.num_clips=2",
    ],
    tmp_path,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  lines = (run.stdout + run.stderr).strip().splitlines()
  assert len(lines) <= 40, "\n".join(lines)
  assert not [l for l in lines if "libtpu" in l or "TPU" in l or l.startswith(("I0", "W0", "E0"))], lines
  assert any(l.startswith("step 4/4 loss") and "ETA" in l for l in lines), lines
  assert any(l.startswith("physics ") for l in lines), lines  # the trainer's physics evaluation ran
  rows = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
  assert any("physics/pass_rate" in r and "physics/check/temporal/flicker" in r for r in rows)
  tags = _events(str(tmp_path / "wd" / "tensorboard"))
  assert ("loss", "simple_value") in tags and ("samples/0", "image") in tags
  assert any(tag.startswith("_hparams_") for tag, _ in tags) and any(t.startswith("config") for t, _ in tags)


@pytest.mark.parametrize(
  "args,names",
  [
    (["--config.optim.lrr=1"], ["--config.optim.lrr", 'did you mean "lr"']),
    (["--config.diffusion.prediction=eps"], ["diffusion.prediction='eps'"]),
  ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, names):
  run = _train(args, tmp_path)
  assert run.returncode == 2
  err = run.stderr.strip().splitlines()
  assert 1 <= len(err) <= 2 and "Traceback" not in run.stderr, run.stderr
  for name in names:
    assert name in run.stderr


def test_a_missing_config_file_is_named_and_verbose_shows_the_traceback(tmp_path):
  cmd = [sys.executable, "-m", "microverse_jax.train", "--config=configs/nope.py", f"--workdir={tmp_path}"]
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and len(run.stderr.strip().splitlines()) <= 2, run.stderr
  assert "configs/nope.py" in run.stderr and "Traceback" not in run.stderr
  loud = subprocess.run(cmd + ["--verbose"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_the_batch_is_sharded_by_the_rules_table():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  assert batches.batch_sharding(mesh, sharding.logical_rules()).spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  rules = sharding.logical_rules({"batch": ["data"]})
  assert batches.batch_sharding(mesh, rules).spec == jax.sharding.PartitionSpec("data")


def test_physics_eval_without_the_scorer_fails_before_compiling(monkeypatch):
  """After `pip install -e .` alone, the main job must not crash at its last step (then at every resume)."""
  from microverse_jax import evaluators
  from microverse_jax.configs import microsim_tiny

  c = microsim_tiny.get_config("test")
  c.evals.physics.every = 4
  monkeypatch.setitem(sys.modules, "microworldbench.physics", None)  # as if bench/ were not installed
  with pytest.raises(
    ValueError, match=r"evals.physics \(kind physics\) needs the scorer package: pip install -e ./bench"
  ):
    evaluators.check(c)
  c.evals.physics.every = 0
  evaluators.check(c)
  c.evals.physics.every, c.data.name = 4, "microsim10k"  # no procedural ground truth to score against
  with pytest.raises(
    ValueError, match=r"evals.physics \(kind physics\) needs data.name='microsim_synth', not 'microsim10k'"
  ):
    evaluators.check(c)
  c.evals.physics.kind = "physicz"
  with pytest.raises(ValueError, match=r"evals.physics.kind='physicz': no such evaluator"):
    evaluators.check(c)


@pytest.mark.hostile
def test_only_a_config_lookup_is_called_a_config_key(tmp_path):
  """Issue 29, item 8: any AttributeError or KeyError was reported as "no such config key"."""
  import ml_collections

  from microverse_jax import cli, sample

  def error_of(fn):
    try:
      fn()
    except (AttributeError, KeyError) as e:
      return e

  config = ml_collections.ConfigDict({"optim": {"lr": 1.0}})
  assert cli.describe(error_of(lambda: config.optim.lrr), []).startswith("config key 'lrr': no such config key")
  not_config = error_of(lambda: (7).encode)
  assert cli.describe(not_config, []) == "AttributeError: 'int' object has no attribute 'encode'"
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"id": "a", "caption": 7}\n')
  with pytest.raises(ValueError, match=r"prompts.jsonl:1: the caption is a int, not text"):
    sample.load_prompts(str(prompts))


def test_a_config_the_trainer_cannot_train_with_an_image_is_refused_before_anything_runs(tmp_path):
  """A "concat" model's image latents encode the first frame and blank frames: a latent cache lacks them."""
  from microverse_jax import train
  from microverse_jax.configs import microsim_tiny

  c = microsim_tiny.get_config("test")
  c.diffusion.image_conditioning, c.model.in_channels, c.data.source = "concat", 7, "latents"
  with pytest.raises(ValueError, match=r"data.source='latents' with diffusion.image_conditioning='concat'"):
    train.train(c, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_a_first_frame_model_is_scored_from_text_and_in_simulate_mode(synth_data_dir, tmp_path):
  run = _train(
    [
      f"--config.data.data_dir={synth_data_dir}",
      "--config.diffusion.image_conditioning=ti2v",
      "--config.sample.steps=2",
      "--config.evals.physics.every=4",
      "--config.evals.physics.num_clips=2",
    ],
    tmp_path,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  lines = (run.stdout + run.stderr).splitlines()
  assert any(l.startswith("physics pass_rate=") for l in lines), lines
  assert any(l.startswith("physics simulate pass_rate=") for l in lines), lines
  final = json.loads((tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()[-1])
  for mode in ("physics", "physics_simulate"):
    assert 0.0 <= final[f"{mode}/pass_rate"] <= 1.0 and f"{mode}/check/temporal/flicker" in final, final.keys()


def test_the_long_variant_runs_as_the_docs_give_it(synth_data_dir, tmp_path):
  """configs/microsim_tiny.py:long (README, docs/training.md) at the test sizes: SNR+1 weighting and EMA weights."""
  run = _train([f"--config.data.data_dir={synth_data_dir}"], tmp_path, config="configs/microsim_tiny.py:long,test")
  assert run.returncode == 0, run.stderr[-3000:]
  saved = json.loads((tmp_path / "wd" / "config.json").read_text())
  assert (saved["diffusion"]["weighting"], saved["optim"]["ema_decay"]) == ("snr+1", 0.999)
  assert "step 4/4 loss" in run.stdout + run.stderr
