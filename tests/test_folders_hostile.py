"""Folders that say what they are and are written whole (issue 29): a command refuses a folder of another
kind, an interrupted export or conversion keeps the old folder, a failed save exits at once, a resume
never rewrites the run's config before its checkpoint restores, and an unreadable step falls back."""

import os
import shutil
import subprocess
import sys

import pytest
from flax import nnx
from train_helpers import tiny_config

from microverse_jax import convert, export, files, pipeline, plans, saved_config, train
from microverse_jax.models.wan_dit import WanDiT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(synth_data_dir, tmp_path_factory):
  """(config, workdir) of a two-step tiny run, checkpointed at steps 1 and 2. Tests that write copy it."""
  c = tiny_config(synth_data_dir, **{"train.num_steps": 2, "train.checkpoint_every": 1})
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train(c, workdir)
  return c, workdir


def _copy(workdir: str, tmp_path) -> str:
  return shutil.copytree(workdir, str(tmp_path / "run"))


def _dit(c, seed: int) -> WanDiT:
  return WanDiT(plans.dit_config(c), rngs=nnx.Rngs(seed))


def _contents(folder) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = open(path, "rb").read()
  return out


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), proc.stderr[-3000:]
  return err[0]


# ------------------------------------------------------------------------ 1. a folder of another kind
@pytest.mark.hostile
def test_export_over_its_own_workdir_is_refused_and_the_run_still_samples(run, tmp_path):
  c, workdir = run
  workdir = _copy(workdir, tmp_path)
  with pytest.raises(ValueError, match=r"--out=.*/run: a training run's workdir, not a new folder or a converted"):
    export.export(c, workdir, workdir)
  assert saved_config.get_config(workdir).data.data_dir == c.data.data_dir


@pytest.mark.hostile
def test_train_refuses_a_converted_checkpoint_as_its_workdir(run, tmp_path):
  c, _ = run
  ckpt = str(tmp_path / "ckpt")
  convert.save_params(_dit(c, 1), ckpt, "dit")
  before = _contents(ckpt)
  with pytest.raises(ValueError, match=r"--workdir=.*/ckpt: a converted checkpoint, not a new folder or a training"):
    train.train(c, ckpt)
  assert _contents(ckpt) == before


@pytest.mark.hostile
def test_a_resume_with_a_config_that_does_not_fit_is_one_line_and_keeps_the_runs_config(run, tmp_path):
  c, workdir = run
  workdir = _copy(workdir, tmp_path)
  before = open(os.path.join(workdir, "config.json"), "rb").read()
  other = tiny_config(c.data.data_dir, **{"model.ffn_dim": 96, "train.num_steps": 3})
  with pytest.raises(ValueError) as e:
    train.train(other, workdir)
  assert "\n" not in str(e.value)
  assert str(e.value).startswith(
    f"{workdir}: the config does not fit checkpoint step 2: params.blocks.ffn_in.bias is (2, 64) in the checkpoint, "
    "(2, 96) in the config (and "
  )
  assert open(os.path.join(workdir, "config.json"), "rb").read() == before


@pytest.mark.hostile
def test_sample_from_a_workdir_given_as_checkpoint_suggests_workdir(run):
  c, workdir = run
  with pytest.raises(ValueError, match=rf"--checkpoint={workdir}: a training run's workdir.*give it as --workdir"):
    pipeline.Pipeline.from_pretrained(workdir, config=c)


def test_folders_say_what_they_are_and_older_ones_are_recognised(run, tmp_path):
  c, workdir = run
  assert files.folder_kind(workdir) == "run" and os.path.exists(os.path.join(workdir, files.MARKER))
  ckpt = str(tmp_path / "ckpt")
  convert.save_params(_dit(c, 1), ckpt, "dit")
  assert files.folder_kind(ckpt) == "checkpoint"
  for path, names, kind in [  # written before artifact.json: known by what they hold
    ("old_run", ["checkpoints/"], "run"),
    ("old_ckpt", ["params/", "config.json"], "checkpoint"),
    ("cache", ["microsim_synth_latents/"], "cache"),
    ("hf", ["model.safetensors"], "weights"),
    ("notes", ["notes.txt"], "other"),
    ("empty", [], None),
  ]:
    (tmp_path / path).mkdir()
    for name in names:
      if name.endswith("/"):
        (tmp_path / path / name).mkdir()
      else:
        (tmp_path / path / name).write_text("{}")
    assert files.folder_kind(tmp_path / path) == kind, path
  with pytest.raises(ValueError, match=r"--workdir=.*/cache: a latent cache, not a new folder or a training run"):
    train.train(c, str(tmp_path / "cache"))


# ------------------------------------------------------------------------ 2. whole or not at all
class _Interrupt:
  """Stands in for convert's `json`: dies (as Ctrl-C would) while the config is written, after the params."""

  @staticmethod
  def dumps(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.hostile
def test_an_interrupted_conversion_keeps_the_old_checkpoint_whole(run, tmp_path, monkeypatch):
  c, _ = run
  ckpt = str(tmp_path / "ckpt")
  convert.save_params(_dit(c, 1), ckpt, "dit")
  before = _contents(ckpt)
  monkeypatch.setattr(convert, "json", _Interrupt)
  with pytest.raises(KeyboardInterrupt):
    convert.save_params(_dit(c, 2), ckpt, "dit")
  assert _contents(ckpt) == before
  assert os.listdir(tmp_path) == ["ckpt"]  # the temporary sibling is gone


@pytest.mark.hostile
def test_an_interrupted_diffusers_export_keeps_the_old_export_whole(run, tmp_path, monkeypatch):
  import safetensors.numpy

  c, _ = run
  out = str(tmp_path / "transformer")
  export.export_diffusers(_dit(c, 1), out, max_shard_bytes=20_000)
  before = _contents(out)
  assert len([n for n in before if n.endswith(".safetensors")]) > 2
  save_file, written = safetensors.numpy.save_file, []

  def dies_after_one_shard(tensors, filename, metadata=None):
    if written:
      raise KeyboardInterrupt
    written.append(filename)
    save_file(tensors, filename, metadata=metadata)

  monkeypatch.setattr(safetensors.numpy, "save_file", dies_after_one_shard)
  with pytest.raises(KeyboardInterrupt):
    export.export_diffusers(_dit(c, 2), out, max_shard_bytes=20_000)
  assert _contents(out) == before
  monkeypatch.undo()
  export.export_diffusers(_dit(c, 2), out, max_shard_bytes=20_000)  # an export of the same kind is replaced
  assert _contents(out) != before and files.folder_kind(out) == "diffusers"
  assert os.listdir(tmp_path) == ["transformer"]


@pytest.mark.hostile
def test_convert_out_equal_to_or_holding_src_is_refused(run, tmp_path):
  c, _ = run
  ckpt = str(tmp_path / "ckpt")
  convert.save_params(_dit(c, 1), ckpt, "dit")
  before = _contents(ckpt)
  with pytest.raises(ValueError, match=r"--out=.*/ckpt is the --src checkpoint"):
    convert.main(["dit", "--src", ckpt, "--out", ckpt])
  with pytest.raises(ValueError, match=r"--out=.*/ckpt holds the --src checkpoint"):
    convert.main(["dit", "--src", os.path.join(ckpt, "params"), "--out", ckpt])
  assert _contents(ckpt) == before


# ------------------------------------------------------------------------ 3. a save that cannot happen
@pytest.mark.hostile
def test_convert_and_export_onto_a_file_fail_at_once(run, tmp_path):
  c, workdir = run
  ckpt, file = str(tmp_path / "ckpt"), tmp_path / "a_file"
  convert.save_params(_dit(c, 1), ckpt, "dit")
  file.write_text("mine")
  for args in (
    ["-m", "microverse_jax.convert", "dit", "--src", ckpt, "--out", str(file)],
    ["-m", "microverse_jax.export", f"--workdir={workdir}", f"--out={file}"],
  ):
    assert f"--out={file}: a file, not a new folder or a converted checkpoint" in _one_error_line(_cli(*args))
  assert file.read_text() == "mine"


SAVE_UNDER_A_FILE = """
import sys
from flax import nnx
from microverse_jax import convert
from microverse_jax.models.wan_dit import WanDiT, WanDiTConfig
model = WanDiT(WanDiTConfig.preset("tiny"), rngs=nnx.Rngs(0))
try:
  convert.save_params(model, sys.argv[1] + "/sub", "dit")
except OSError as e:
  print("refused:", type(e).__name__)
"""


@pytest.mark.hostile
def test_a_failed_save_exits_at_once(tmp_path):
  """Orbax's async checkpointer, on a failed save, left threads waiting 5 minutes for its signals."""
  (tmp_path / "a_file").write_text("")
  proc = _cli("-c", SAVE_UNDER_A_FILE, str(tmp_path / "a_file"), timeout=90)
  assert proc.returncode == 0 and proc.stdout.startswith("refused: "), proc.stderr[-3000:]


# ------------------------------------------------------------------------ 4. one line for a broken config
@pytest.mark.hostile
def test_a_truncated_saved_config_is_one_line_naming_it(run, tmp_path):
  _, workdir = run
  workdir = _copy(workdir, tmp_path)
  path = os.path.join(workdir, "config.json")
  text = open(path).read()
  open(path, "w").write(text[: len(text) // 2])
  out = f"--out={tmp_path / 'x.mp4'}"
  line = _one_error_line(_cli("-m", "microverse_jax.sample", f"--workdir={workdir}", "--prompt=x", out))
  assert f"{path}: not a saved config, the JSON is cut short or broken" in line


# ------------------------------------------------------------------------ 5. an unreadable step
@pytest.mark.hostile
def test_a_step_with_missing_blocks_falls_back_to_the_step_before(run, tmp_path, capsys):
  c, workdir = run
  workdir = _copy(workdir, tmp_path)
  blocks = os.path.join(workdir, "checkpoints", "2", "state", "ocdbt.process_0", "d")
  for name in os.listdir(blocks):
    os.remove(os.path.join(blocks, name))
  train.train(c, workdir)
  out, err = capsys.readouterr()
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]  # Orbax's orphaned reads
  said = [line for line in out.splitlines() if "cannot be read" in line]
  assert len(said) == 1 and said[0].startswith(f"checkpoint step 2 in {workdir}/checkpoints cannot be read"), out
  assert len(said[0]) < 500 and "resumed from step 1" in out
  steps = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "2" in steps and [s for s in steps if s.startswith("2.incomplete-")]  # step 2 saved again, the old kept


# ------------------------------------------------------------------------ 7. an export inside checkpoints/
@pytest.mark.hostile
@pytest.mark.parametrize("fmt,name", [("orbax", "export"), ("diffusers", "transformer")])
def test_an_export_into_the_runs_checkpoints_is_refused(run, tmp_path, fmt, name):
  c, workdir = run
  workdir = _copy(workdir, tmp_path)
  out = os.path.join(workdir, "checkpoints", name)
  with pytest.raises(ValueError, match=r"--out=.* is inside the run's checkpoints folder, pruned as training goes"):
    export.export(c, workdir, out, fmt)
  assert not os.path.exists(out)
