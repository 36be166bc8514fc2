"""microsim10k builder: valid clips land in train/validation, every bad row is skipped and reported."""

from __future__ import annotations

import json

import pytest
import tensorflow_datasets as tfds

from microverse_jax import build_dataset, input_pipeline, video
from microverse_jax.datasets.microsim10k import Reader, find_metadata, parse_rows, read_metadata, safe_relative_path


def _dataset_dir(data_dir: str):
  return tfds.builder_from_directory(f"{data_dir}/microsim10k/1.1.0")


def test_valid_clips_present_and_bad_rows_reported(microsim10k_data_dir, manual_dir, valid_ids):
  builder = _dataset_dir(microsim10k_data_dir)
  splits = builder.info.splits
  assert set(splits.keys()) == {"train", "validation"}
  assert splits["train"].num_examples + splits["validation"].num_examples == len(valid_ids)
  ids = []
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      record = source[i]
      clip_id = record["id"].decode()
      ids.append(clip_id)
      # Stored as is (no re-encode), with metadata from decoding every frame.
      assert record["video"] == (manual_dir / "videos" / f"{clip_id}.mp4").read_bytes()
      n = valid_ids.index(clip_id)
      assert (record["num_frames"], record["height"], record["width"]) == (9 + n, 32, 24)
      assert record["fps"] == pytest.approx(8.0)
      assert record["caption"].decode() == f"A caption for {clip_id}."
  assert sorted(ids) == valid_ids

  report = builder.data_path / "skipped.jsonl"
  rows = [json.loads(line) for line in report.read_text().splitlines()]
  assert all(set(r) >= {"id", "video", "reason"} for r in rows)
  reasons = {r["id"]: r["reason"] for r in rows}
  assert set(reasons) == {"corrupt", "missing", "escape", "absolute", "noprompt"}
  assert reasons["missing"] == "missing file"
  assert reasons["noprompt"] == "missing prompt"
  assert "escapes" in reasons["escape"] and "escapes" in reasons["absolute"]
  assert "video" in reasons["corrupt"]  # unreadable / truncated video
  assert next(r for r in rows if r["id"] == "escape")["video"] == "../outside.mp4"


def test_validation_split_is_a_deterministic_function_of_ids(microsim10k_data_dir, manual_dir, tmp_path):
  again = build_dataset.build("microsim10k", str(tmp_path), manual_dir=str(manual_dir))
  for split in ("train", "validation"):
    first = _dataset_dir(microsim10k_data_dir).as_data_source(split=split)
    second = tfds.builder_from_directory(str(again)).as_data_source(split=split)
    assert sorted(first[i]["id"] for i in range(len(first))) == sorted(second[i]["id"] for i in range(len(second)))


def test_load_source_and_cli(microsim10k_data_dir, manual_dir, valid_ids, tmp_path, capsys):
  source = input_pipeline.load_source("microsim10k", "train", microsim10k_data_dir)
  assert len(source) >= 1 and video.probe(source[0]["video"]).num_frames == source[0]["num_frames"]
  with pytest.raises(ValueError, match="no split 'test'"):
    input_pipeline.load_source("microsim10k", "test", microsim10k_data_dir)
  with pytest.raises(ValueError, match="not found in"):
    input_pipeline.load_source("microsim10k", "train", str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="needs --manual_dir"):
    build_dataset.build("microsim10k", str(tmp_path), manual_dir=str(tmp_path / "not_downloaded"))
  build_dataset.main(["microsim10k", f"--manual_dir={manual_dir}", f"--data_dir={tmp_path}"])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["skipped"] == 5 and sum(summary["splits"].values()) == len(valid_ids)


def test_metadata_formats(tmp_path):
  rows = [{"id": "a", "video": "v/a.mp4", "prompt": "p, with comma"}, {"video": "v/b.mp4", "prompt": "q"}]
  (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
  assert find_metadata(tmp_path) == ["meta.jsonl"]
  assert parse_rows("meta.jsonl", (tmp_path / "meta.jsonl").read_bytes()) == rows + ["metadata line is not valid JSON"]
  csv_dir = tmp_path / "csv"
  csv_dir.mkdir()
  (csv_dir / "meta.csv").write_text('id,video,prompt\na,v/a.mp4,"p, with comma"\n,v/b.mp4,q\n')
  meta = read_metadata(Reader(csv_dir, 1 << 20), "meta.csv")
  assert [(r.id, r.video, r.caption) for r in meta.rows] == [
    ("a", "v/a.mp4", "p, with comma"),
    ("v/b.mp4", "v/b.mp4", "q"),
  ]
  (csv_dir / "other.json").write_text("[]")
  with pytest.raises(ValueError, match=r"unknown MicroSim-10K layout.*meta.csv.*other.json.*--metadata"):
    find_metadata(csv_dir)


@pytest.mark.parametrize(
  "value,expected",
  [
    ("videos/a.mp4", "videos/a.mp4"),
    ("./videos//a.mp4", "videos/a.mp4"),
    ("videos/../a.mp4", "a.mp4"),
    ("../a.mp4", None),
    ("videos/../../a.mp4", None),
    ("/abs/a.mp4", None),
    ("C:\\x\\a.mp4", None),
    ("..\\a.mp4", None),
    ("", None),
    (None, None),
    (3, None),
  ],
)
def test_safe_relative_path(value, expected):
  assert safe_relative_path(value) == expected
