"""Hostile MicroSim-10K input (issue 17 items 5, 4 and 6): every bad row becomes a skipped row with a
reason; the build never crashes, hangs, leaves the manual dir or reads a video twice."""

from __future__ import annotations

import builtins
import io
import json
import os
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, files, video
from microverse_jax.datasets.microsim_synth import export_prompts

pytestmark = pytest.mark.hostile

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def mp4() -> bytes:
  frames = np.zeros((5, 16, 16, 3), np.uint8)
  frames[:, 2:6, 2:6] = 250
  return video.encode_mp4(frames, fps=8)


def _manual(root, mp4, rows, names=("ok1", "ok2", "ok3")):
  """A manual dir with three good clips plus `rows` (appended to metadata.jsonl; bytes or dicts)."""
  (root / "videos").mkdir(parents=True, exist_ok=True)
  lines = []
  for name in names:
    (root / "videos" / f"{name}.mp4").write_bytes(mp4)
    lines.append(json.dumps({"id": name, "video": f"videos/{name}.mp4", "prompt": f"caption {name}"}).encode())
  lines += [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
  (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  return root


def _build(manual, data_dir, **flags):
  path = build_dataset.build("microsim10k", str(data_dir), manual_dir=str(manual), **flags)
  info = tfds.builder_from_directory(str(path)).info
  ids = sorted(
    tfds.builder_from_directory(str(path)).as_data_source(split=s)[i]["id"].decode()
    for s, split in info.splits.items()
    for i in range(split.num_examples)
  )
  skipped = [json.loads(line) for line in (path / "skipped.jsonl").read_text().splitlines()]
  return ids, {r["id"] if r["id"] is not None else f"row{r['row']}": r["reason"] for r in skipped}


def test_nul_byte_lone_surrogate_and_non_utf8_lines_are_skipped(tmp_path, mp4):
  rows = [
    {"id": "nul", "video": "videos/ok1.mp4\u0000.txt", "prompt": "a NUL byte in the path"},
    b'{"id": "surrogate", "video": "videos/ok2.mp4", "prompt": "lone \\ud800 surrogate"}',
    b'{"id": "latin1", "video": "videos/ok3.mp4", "prompt": "caf\xe9"}',  # not UTF-8
    b'{"id": "surrogate_id\\udc80", "video": "videos/ok1.mp4", "prompt": "fine"}',
  ]
  ids, reasons = _build(_manual(tmp_path / "m", mp4, rows), tmp_path / "out")
  assert ids == ["ok1", "ok2", "ok3"]
  assert reasons["nul"] == "NUL byte in video path"
  assert reasons["surrogate"] == "caption is not valid UTF-8 (lone surrogate)"
  assert reasons["row5"] == "metadata line is not valid UTF-8"
  assert reasons["surrogate_id\udc80"] == "id is not valid UTF-8 (lone surrogate)"


def test_non_utf8_csv_and_json_array(tmp_path, mp4):
  """Whole-file formats: a stray byte spoils only its own row."""
  for kind in ("csv", "json"):
    root = tmp_path / kind
    _manual(root, mp4, [])
    (root / "metadata.jsonl").unlink()
    if kind == "csv":
      data = (
        b"\xef\xbb\xbfid,video,prompt\nok1,videos/ok1.mp4,good\nbad,videos/ok2.mp4,caf\xe9\nok3,videos/ok3.mp4,fine\n"
      )
    else:
      data = (
        b'[{"id": "ok1", "video": "videos/ok1.mp4", "prompt": "good"}, {"id": "bad", "video": '
        b'"videos/ok2.mp4", "prompt": "caf\xe9"}, {"id": "ok3", "video": "videos/ok3.mp4", "prompt": "x"}]'
      )
    (root / f"metadata.{kind}").write_bytes(data)
    ids, reasons = _build(root, tmp_path / f"out_{kind}")
    assert ids == ["ok1", "ok3"] and reasons == {"bad": "caption is not valid UTF-8 (lone surrogate)"}


class _Watchdog:
  """If the build still blocks on `fifo` after `seconds`, a writer opens it (unblocking the reader)
  and `fired` is set: the test fails instead of hanging."""

  def __init__(self, fifo, seconds: float = 20.0):
    self.fifo, self.done, self.fired = fifo, threading.Event(), False
    threading.Thread(target=self._run, args=(seconds,), daemon=True).start()

  def _run(self, seconds):
    while not self.done.wait(seconds):
      self.fired = True
      try:
        os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
      except OSError:
        pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.done.set()


def test_fifo_named_mp4_is_skipped_without_hanging(tmp_path, mp4):
  manual = _manual(tmp_path / "m", mp4, [{"id": "fifo", "video": "videos/fifo.mp4", "prompt": "a FIFO"}])
  fifo = manual / "videos" / "fifo.mp4"
  os.mkfifo(fifo)
  with _Watchdog(fifo) as watchdog:
    ids, reasons = _build(manual, tmp_path / "out")
  assert not watchdog.fired, "the build blocked on a FIFO"
  assert ids == ["ok1", "ok2", "ok3"] and reasons == {"fifo": "not a regular file"}


def test_oversized_file_is_skipped_under_the_cap(tmp_path, mp4):
  rows = [{"id": "big", "video": "videos/big.mp4", "prompt": "too large"}]
  manual = _manual(tmp_path / "m", mp4, rows)
  (manual / "videos" / "big.mp4").write_bytes(mp4 + b"\0" * (2 << 20))
  ids, reasons = _build(manual, tmp_path / "out", max_file_mb=1)
  assert ids == ["ok1", "ok2", "ok3"] and reasons["big"].startswith("file too large")
  assert "--max_file_mb" in build_dataset.__doc__ and "default 512" in _help()


def _help() -> str:
  out = io.StringIO()
  with pytest.raises(SystemExit), __import__("contextlib").redirect_stdout(out):
    build_dataset.main(["--help"])
  return out.getvalue()


def test_each_video_is_read_once(tmp_path, mp4, monkeypatch):
  manual = _manual(tmp_path / "m", mp4, [])
  opened = []
  real_open, real_os_open = builtins.open, os.open

  def spy(path, *args, **kwargs):
    if str(path).endswith(".mp4"):
      opened.append(os.path.basename(str(path)))
    return real_open(path, *args, **kwargs)

  def os_spy(path, *args, **kwargs):
    if str(path).endswith(".mp4"):
      opened.append(os.path.basename(str(path)))
    return real_os_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", spy)
  monkeypatch.setattr(io, "open", spy)
  monkeypatch.setattr(os, "open", os_spy)
  ids, _ = _build(manual, tmp_path / "out")
  monkeypatch.undo()
  assert ids == ["ok1", "ok2", "ok3"]
  assert sorted(opened) == ["ok1.mp4", "ok2.mp4", "ok3.mp4"]


def test_symlinks_followed_only_inside_the_manual_dir(tmp_path, mp4):
  rows = [
    {"id": "inside", "video": "links/inside.mp4", "prompt": "link to a clip in the manual dir"},
    {"id": "outside", "video": "links/outside.mp4", "prompt": "link leaving the manual dir"},
    {"id": "dirlink", "video": "elsewhere/secret.mp4", "prompt": "folder link leaving the manual dir"},
  ]
  manual = _manual(tmp_path / "m", mp4, rows)
  (tmp_path / "secret").mkdir()
  (tmp_path / "secret" / "secret.mp4").write_bytes(mp4)
  (manual / "links").mkdir()
  os.symlink("../videos/ok1.mp4", manual / "links" / "inside.mp4")
  os.symlink(tmp_path / "secret" / "secret.mp4", manual / "links" / "outside.mp4")
  os.symlink(tmp_path / "secret", manual / "elsewhere")
  ids, reasons = _build(manual, tmp_path / "out")
  assert ids == ["inside", "ok1", "ok2", "ok3"]
  assert reasons == {
    "outside": "symlink target outside manual_dir (pass --follow_symlinks to follow it)",
    "dirlink": "symlink target outside manual_dir (pass --follow_symlinks to follow it)",
  }
  ids, reasons = _build(manual, tmp_path / "out_follow", follow_symlinks=True)
  assert ids == ["dirlink", "inside", "ok1", "ok2", "ok3", "outside"] and not reasons


def test_hugging_face_hub_cache_snapshot_links_into_blobs(tmp_path, mp4):
  """huggingface_hub's cache: snapshots/REV/* are links to ../../blobs/SHA; read without a flag."""
  repo = tmp_path / "hub" / "datasets--wangrongsheng--MicroVerse"
  snapshot = repo / "snapshots" / "0123abcd"
  (repo / "blobs").mkdir(parents=True)
  (snapshot / "videos").mkdir(parents=True)
  meta = "".join(json.dumps({"file_name": f"videos/{n}.mp4", "text": f"caption {n}"}) + "\n" for n in "abcx")
  (repo / "blobs" / "meta_sha").write_text(meta)
  (repo / "blobs" / "video_sha").write_bytes(mp4)
  os.symlink("../../blobs/meta_sha", snapshot / "metadata.jsonl")
  for n in "abc":
    os.symlink("../../../blobs/video_sha", snapshot / "videos" / f"{n}.mp4")
  (tmp_path / "hub" / "other").mkdir()
  (tmp_path / "hub" / "other" / "x.mp4").write_bytes(mp4)
  os.symlink("../../../../other/x.mp4", snapshot / "videos" / "x.mp4")  # outside the repo's blobs
  ids, reasons = _build(snapshot, tmp_path / "out")
  assert ids == ["videos/a.mp4", "videos/b.mp4", "videos/c.mp4"]
  assert reasons == {"videos/x.mp4": "symlink target outside manual_dir (pass --follow_symlinks to follow it)"}


def test_metadata_fifo_is_an_error_not_a_hang(tmp_path):
  (tmp_path / "m").mkdir()
  os.mkfifo(tmp_path / "m" / "metadata.jsonl")
  with (
    _Watchdog(tmp_path / "m" / "metadata.jsonl") as watchdog,
    pytest.raises(ValueError, match="metadata.jsonl.*not a regular file"),
  ):
    build_dataset.build("microsim10k", str(tmp_path / "out"), manual_dir=str(tmp_path / "m"))
  assert not watchdog.fired


def test_export_prompts_twice_replaces_the_file_and_checks_ids(tmp_path, monkeypatch):
  """Issue 17 items 5 and 4: a second export replaces the first (no FileExistsError, no .tmp left),
  and the ids, which become mp4 names in `sample --prompts`, go through files.check_ids."""
  path = tmp_path / "prompts" / "prompts.jsonl"
  assert export_prompts(path, num_clips=3, num_frames=5, size=16) == 3
  assert export_prompts(path, num_clips=4, num_frames=5, size=16) == 4
  assert len(path.read_text().splitlines()) == 4 and os.listdir(path.parent) == ["prompts.jsonl"]
  checked = []
  monkeypatch.setattr(files, "check_ids", lambda ids, *a, **k: checked.extend(ids) or list(ids))
  export_prompts(path, num_clips=2, num_frames=5, size=16)
  assert checked == ["synth_000000", "synth_000001"]


def test_an_oversized_quoted_csv_caption_skips_exactly_its_own_row(tmp_path, mp4):
  """A multi-line caption over csv's 128 KB field limit stopped the reader mid-field: its continuation
  lines were parsed as rows, and one became a training clip."""
  root = _manual(tmp_path / "m", mp4, [], names=("ok1", "ok2", "ok3", "ok4"))
  (root / "metadata.jsonl").unlink()
  big = "a" * 140_000
  (root / "metadata.csv").write_text(
    "id,video,prompt\nok1,videos/ok1.mp4,good\n"
    f'big,videos/ok2.mp4,"{big}\ninjected,videos/ok4.mp4,a continuation line\nend of the caption"\n'
    "ok3,videos/ok3.mp4,fine\n"
  )
  ids, reasons = _build(root, tmp_path / "out")
  assert ids == ["ok1", "ok3"]
  assert reasons == {"row1": "CSV field 'prompt' longer than 131072 characters"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_nan_ids_fall_back_to_the_video_path_like_absent_ones(tmp_path, mp4, kind):
  """A NaN id (a pandas-written gap) became the string 'nan': all but one such row were dropped as duplicates."""
  root = _manual(tmp_path / "m", mp4, [])
  (root / "metadata.jsonl").unlink()
  table = {
    "id": [float("nan"), float("nan"), 7.0],
    "video": ["videos/ok1.mp4", "videos/ok2.mp4", "videos/ok3.mp4"],
    "prompt": ["one", "two", "three"],
  }
  rows = [dict(zip(table, values)) for values in zip(*table.values())]
  if kind == "jsonl":
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN: json's literal
  else:
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    pq.write_table(pa.table(table), root / "metadata.parquet")
  ids, reasons = _build(root, tmp_path / f"out_{kind}")
  assert ids == ["7.0", "videos/ok1.mp4", "videos/ok2.mp4"] and reasons == {}
