"""microsim10k reads every layout a user may hold (issue 16 part 1): one small fixture per layout."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, video
from microverse_jax.datasets.microsim10k import Microsim10k, find_metadata, path_split

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def mp4() -> bytes:
  frames = np.zeros((5, 16, 16, 3), np.uint8)
  frames[:, 4:8, 4:8] = 200
  return video.encode_mp4(frames, fps=8)


def _videos(root, names, data):
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)


def _rows(root, **flags):
  """(id, video, caption, split) of the usable rows, in file order, and the skipped ones."""
  lines = []
  builder = Microsim10k(data_dir=str(root.parent / f"{root.name}_out"), log=lines.append, **flags)
  rows = builder.read_layout(root)
  return [(r.id, r.video, r.caption, r.split) for r in rows], builder, lines


def _split_ids(data_dir) -> dict:
  source = tfds.builder_from_directory(f"{data_dir}/microsim10k/1.1.0")
  return {
    name: sorted(source.as_data_source(split=name)[i]["id"].decode() for i in range(info.num_examples))
    for name, info in source.info.splits.items()
  }


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv"])
def test_official_diffsynth_layout(tmp_path, mp4, kind):
  rows = [
    {"video": "videos/a.mp4", "prompt": "A cell divides.", "id": "a"},
    {"video": "videos/b.mp4", "prompt": "Beads diffuse."},
  ]
  _videos(tmp_path, ["videos/a.mp4", "videos/b.mp4"], mp4)
  if kind == "json":
    (tmp_path / "MicroSim-10K.json").write_text(json.dumps(rows))
  elif kind == "jsonl":
    (tmp_path / "MicroSim-10K.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  else:  # a byte-order mark must not eat the first column; the optional id column may be empty
    with open(tmp_path / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
      writer = csv.DictWriter(f, ["video", "prompt", "id"])
      writer.writeheader()
      writer.writerows([{"id": "", **r} if "id" not in r else r for r in rows])
  got, _, lines = _rows(tmp_path)
  assert got == [
    ("a", "videos/a.mp4", "A cell divides.", None),
    ("videos/b.mp4", "videos/b.mp4", "Beads diffuse.", None),
  ]
  assert "2 rows" in "\n".join(lines) and "video='video' caption='prompt'" in "\n".join(lines)


@pytest.mark.parametrize("caption_key", ["text", "caption", "prompt"])
def test_hugging_face_folder_layout(tmp_path, mp4, caption_key):
  """metadata.jsonl with file_name + a caption column, the videos beside it (here in a subfolder)."""
  _videos(tmp_path, ["clips/x/a.mp4", "clips/x/b.mp4"], mp4)
  (tmp_path / "clips" / "metadata.jsonl").write_text(
    json.dumps({"file_name": "x/a.mp4", caption_key: "first"})
    + "\n"
    + json.dumps({"file_name": "x/b.mp4", caption_key: "second"})
    + "\n"
  )
  got, _, _ = _rows(tmp_path)
  assert got == [("clips/x/a.mp4", "clips/x/a.mp4", "first", None), ("clips/x/b.mp4", "clips/x/b.mp4", "second", None)]


def test_hugging_face_split_folders_win_over_the_hash(tmp_path, mp4):
  names = [f"c{i}" for i in range(6)]
  for split, members in (("train", names[:4]), ("validation", names[4:5]), ("test", names[5:])):
    _videos(tmp_path / split, [f"{n}.mp4" for n in members], mp4)
    if split == "validation":  # a CSV in one split and JSONL in the others: each file read on its own
      (tmp_path / split / "metadata.csv").write_text(
        "file_name,caption\n" + "".join(f"{n}.mp4,caption {n}\n" for n in members)
      )
    else:
      (tmp_path / split / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{n}.mp4", "text": f"caption {n}", "id": n}) + "\n" for n in members)
      )
  data_dir = tmp_path.parent / "out_splits"
  build_dataset.build("microsim10k", str(data_dir), manual_dir=str(tmp_path), validation_fraction=0.5)
  assert _split_ids(data_dir) == {
    "train": ["c0", "c1", "c2", "c3"],
    "validation": ["validation/c4.mp4"],
    "test": ["c5"],
  }


def test_shards_and_split_column(tmp_path, mp4):
  _videos(tmp_path, [f"v/{i}.mp4" for i in range(4)], mp4)
  for shard in range(2):
    (tmp_path / f"metadata-{shard:05d}-of-00002.jsonl").write_text(
      "".join(
        json.dumps({"file_name": f"v/{i}.mp4", "text": f"t{i}", "split": ["train", "val"][i % 2]}) + "\n"
        for i in (2 * shard, 2 * shard + 1)
      )
    )
  got, builder, lines = _rows(tmp_path)
  assert [r[3] for r in got] == ["train", "validation"] * 2
  assert len(builder.metadata) == 2 and "split column 'split'" in "\n".join(lines)
  splits = builder.assign_splits(builder.read_layout(tmp_path))
  assert {k: [r.id for r in v] for k, v in splits.items()} == {
    "train": ["v/0.mp4", "v/2.mp4"],
    "validation": ["v/1.mp4", "v/3.mp4"],
  }


def test_train_only_release_still_gets_a_hash_validation_split(tmp_path, mp4):
  _videos(tmp_path / "train", [f"{i}.mp4" for i in range(8)], mp4)
  (tmp_path / "train" / "metadata.jsonl").write_text(
    "".join(json.dumps({"file_name": f"{i}.mp4", "text": "t"}) + "\n" for i in range(8))
  )
  _, builder, _ = _rows(tmp_path)
  splits = builder.assign_splits(builder.read_layout(tmp_path))
  assert sorted(splits) == ["train", "validation"] and len(splits["validation"]) >= 1


def test_parquet_metadata(tmp_path, mp4, monkeypatch):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  _videos(tmp_path / "data", ["a.mp4", "b.mp4"], mp4)
  pq.write_table(
    pa.table({"file_name": ["a.mp4", "b.mp4"], "text": ["pa", "pb"]}),
    tmp_path / "data" / "train-00000-of-00001.parquet",
  )
  got, _, _ = _rows(tmp_path)
  assert got == [("data/a.mp4", "data/a.mp4", "pa", "train"), ("data/b.mp4", "data/b.mp4", "pb", "train")]
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
  with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet.*pip install pyarrow"):
    _rows(tmp_path)


def test_flags_pick_files_and_columns(tmp_path, mp4):
  _videos(tmp_path, ["m/a.mp4", "m/b.mp4"], mp4)
  (tmp_path / "lists").mkdir()
  (tmp_path / "lists" / "part1.jsonl").write_text(json.dumps({"clip": "../m/a.mp4", "desc": "A", "uid": 7}) + "\n")
  (tmp_path / "lists" / "part2.jsonl").write_text(json.dumps({"clip": "../m/b.mp4", "desc": "B", "uid": 8}) + "\n")
  (tmp_path / "notes.json").write_text("{}")
  with pytest.raises(ValueError, match=r"unknown MicroSim-10K layout.*notes.json.*has columns \[\].*--metadata"):
    _rows(tmp_path)  # no metadata* file, and the only top-level JSON is not metadata
  with pytest.raises(ValueError, match=r"columns \['clip', 'desc', 'uid'\].*--video_key"):
    _rows(tmp_path, metadata_file="lists/*.jsonl")
  got, _, _ = _rows(tmp_path, metadata_file="lists/*.jsonl", video_key="clip", caption_key="desc", id_key="uid")
  assert got == [("7", "m/a.mp4", "A", None), ("8", "m/b.mp4", "B", None)]
  with pytest.raises(ValueError, match=r"--metadata='nothing\*' matches no file.*notes.json"):
    _rows(tmp_path, metadata_file="nothing*")
  for outside in ("../*", str(tmp_path / "notes.json"), "/etc/*"):
    with pytest.raises(ValueError, match="must be a name or glob inside"):
      _rows(tmp_path / "lists", metadata_file=outside)


def test_unknown_layout_names_the_files_and_flags(tmp_path, mp4):
  _videos(tmp_path, ["a.mp4"], mp4)
  with pytest.raises(ValueError, match=r"no metadata file.*'a.mp4'.*--metadata.*--video_key.*--caption_key"):
    find_metadata(tmp_path)
  (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "a.mp4", "label": "x"}) + "\n")
  with pytest.raises(ValueError, match=r"metadata.jsonl \(1 rows\) has columns \['label', 'path'\].*--video_key"):
    _rows(tmp_path)


def test_cli_prints_what_it_found(tmp_path, mp4, capsys):
  manual = tmp_path / "manual"
  _videos(manual, ["a.mp4", "b.mp4", "c.mp4"], mp4)
  (manual / "metadata.jsonl").write_bytes(
    "".join(json.dumps({"file_name": f"{n}.mp4", "text": n}) + "\n" for n in "abc").encode() + b"\xff not UTF-8\n"
  )
  build_dataset.main(["microsim10k", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}"])
  out = capsys.readouterr().out
  assert "microsim10k: 1 metadata file(s)" in out
  assert "metadata.jsonl: 4 rows; columns ['file_name', 'text']; video='file_name' caption='text'" in out
  assert "build microsim10k 3/3 (100%)" in out and "ETA" in out  # progress: done/total, rate, ETA
  summary = json.loads(out.strip().splitlines()[-1])
  assert sum(summary["splits"].values()) == 3 and summary["skipped"] == 1


@pytest.mark.parametrize(
  "path,split",
  [
    ("train/metadata.jsonl", "train"),
    ("data/validation-0-of-1.parquet", "validation"),
    ("val/metadata.csv", "validation"),
    ("metadata.jsonl", None),
    ("test/x/metadata.jsonl", "test"),
    ("trainer/metadata.jsonl", None),
  ],
)
def test_path_split(path, split):
  assert path_split(path) == split


def test_progress_total_and_eta(tmp_path, capsys):
  """Issue 18 item 8: periodic lines with done/total, rate and ETA off a terminal (tqdm on one)."""
  progress = build_dataset.Progress("build x", every_s=0.0, tty=False)
  progress.start(4)
  for _ in range(4):
    progress.update(1)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 4 and lines[0].startswith("build x 1/4 (25%)") and "ETA" in lines[0]
  assert lines[-1].startswith("build x 4/4 (100%)") and lines[-1].endswith("ETA 0m00s")
  build_dataset.main(["microsim_synth", f"--data_dir={tmp_path}", "--num_clips=3", "--num_frames=3", "--size=16"])
  out = capsys.readouterr().out
  assert "build microsim_synth 3/3 (100%)" in out
  assert json.loads(out.strip().splitlines()[-1])["splits"] == {"train": 2, "validation": 1}
