"""gs:// paths without a network: an in-memory fsspec filesystem stands in for GCS (with its object
semantics: files cannot be appended to; gcsfs turns 'a' into an overwrite)."""

from __future__ import annotations

import json
import warnings

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry as fsspec_classes  # protocol -> filesystem class

from microverse_jax.launch import sweep, topologies, tpu


class FakeGCS(MemoryFileSystem):
  """gs:// (and gcs://) in memory. Like gcsfs, mode 'a' overwrites the object instead of appending."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes gcsfs's option
    super().__init__(*args, **kwargs)

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      warnings.warn("Append mode 'a' is not supported in GCS. Using overwrite mode instead.")
      mode = mode.replace("a", "w")
    return super()._open(path, mode, **kwargs)


class _FakeGcsEventWriter:
  """tensorboardX's gs:// writer re-uploads its whole buffer on flush; this one does so to FakeGCS."""

  def __init__(self, path):
    self.path, self.buffer = path, b""

  def write(self, data):
    self.buffer += data

  def flush(self):
    epath.Path(self.path).write_bytes(self.buffer)

  def close(self):
    self.flush()


class _FakeGcsEventWriterFactory:
  def open(self, path):
    return _FakeGcsEventWriter(path)

  def directory_check(self, path):
    pass


@pytest.fixture
def fake_gcs(monkeypatch):
  for protocol in FakeGCS.protocol:
    monkeypatch.setitem(fsspec_classes, protocol, FakeGCS)  # restored after the test
  monkeypatch.setattr(FakeGCS, "store", {})
  monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches one filesystem per scheme
  yield
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_fake_gcs_has_gcs_semantics(fake_gcs):
  path = epath.Path("gs://bucket/dir/file.txt")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("a\n")
  with pytest.warns(UserWarning, match="Append mode"):
    with path.open("a") as f:
      f.write("b\n")
  assert path.read_text() == "b\n"
  assert [str(p) for p in epath.Path("gs://bucket/dir").iterdir()] == ["gs://bucket/dir/file.txt"]


def test_sweep_workdirs_and_manifest_on_gs(fake_gcs):
  root = "gs://bucket/sweeps/lora"
  runs = sweep.expand("configs/wan2_1.py:1.3b,full", root)
  assert [r.workdir for r in runs] == [f"{root}/00_lr=5e-06", f"{root}/01_lr=1e-05", f"{root}/02_lr=2e-05"]
  path = sweep.write_manifest(root, "configs/wan2_1.py:1.3b,full", runs)
  assert str(path) == f"{root}/sweep.json"
  manifest = json.loads(epath.Path(root, "sweep.json").read_text())
  assert [r["workdir"] for r in manifest["runs"]] == [r.workdir for r in runs]
  assert [p.name for p in epath.Path(root).iterdir()] == ["sweep.json"]  # the temp file is gone


def test_trainer_metrics_on_gs_keep_every_row(fake_gcs, monkeypatch):
  """metrics.jsonl in a gs:// workdir must hold every logged step, also after a restart."""
  from tensorboardX import record_writer

  from microverse_jax import train

  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", _FakeGcsEventWriterFactory())
  workdir = "gs://bucket/runs/tiny"
  writer = train.MetricWriter(workdir, resume_step=0)
  writer.write(1, {"loss": 1.0})
  writer.write(2, {"loss": 0.5})
  writer.tb.close()
  writer = train.MetricWriter(workdir, resume_step=2)  # resumed run
  writer.write(3, {"loss": 0.25})
  writer.tb.close()  # flushes its events while gs:// is still the fake
  rows = [json.loads(l) for l in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  assert any(p.name.startswith("events.out.tfevents") for p in epath.Path(workdir, "tensorboard").iterdir())


def test_multi_host_workdir_must_be_gs():
  v5p_64 = topologies.parse("v5p-64")
  tpu.check_workdir(v5p_64, "gs://bucket/run")
  for local_dir in ("/tmp/run", "~/run", "runs/x", "gcs/run"):
    with pytest.raises(ValueError, match="8 workers"):
      tpu.check_workdir(v5p_64, local_dir)
