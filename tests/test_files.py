"""files: atomic writes (a reader sees the old file or the new one, never a part), folders that say what they
are, folders written whole or not at all, paths kept apart, and ids that become file names."""

import json
import os
import stat

import pytest

from microverse_jax import files


def _hidden(folder):
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ atomic files
def test_write_text_creates_the_folder_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "a" / "b" / "note.txt"
  files.write_text(path, "héllo")
  assert path.read_bytes() == "héllo".encode() and _hidden(path.parent) == []
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0o600
  files.write_bytes(str(path), b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01" and os.listdir(path.parent) == ["note.txt"]


def test_a_reader_sees_the_old_file_until_the_new_one_is_whole(tmp_path):
  path = tmp_path / "state.json"
  path.write_text("old")
  seen = []

  def fill(f):
    f.write(b"new, part one;")
    seen.append(path.read_text())  # mid-write: the target is still the old file
    f.write(b" part two")

  files.write_with(path, fill)
  assert seen == ["old"] and path.read_text() == "new, part one; part two" and _hidden(tmp_path) == []


def test_a_write_that_fails_keeps_the_old_file_and_removes_its_temporary(tmp_path):
  path = tmp_path / "state.json"
  path.write_text("old")

  def fill(f):
    f.write(b"half")
    raise KeyboardInterrupt  # Ctrl-C mid-write

  with pytest.raises(KeyboardInterrupt):
    files.write_with(path, fill)
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_remote_paths_and_folder_fsync():
  assert files.is_remote("gs://bucket/x") and not files.is_remote("/tmp/x") and not files.is_remote("rel/x")
  files.fsync_folder("/no/such/folder")  # nothing to make durable: no error


# ------------------------------------------------------------------------------ what a folder is
def test_mark_says_what_a_folder_is_and_folder_kind_reads_it(tmp_path):
  assert files.folder_kind(tmp_path / "absent") is None and files.folder_kind(tmp_path) is None  # empty
  (tmp_path / "f.txt").write_text("x")
  assert files.folder_kind(tmp_path / "f.txt") == "file"
  files.mark(tmp_path / "run", "run")
  assert json.loads((tmp_path / "run" / files.MARKER).read_text()) == {"artifact": "run"}
  (tmp_path / "run" / "params").mkdir()  # the marker wins over what the folder holds
  assert files.folder_kind(tmp_path / "run") == "run"


@pytest.mark.parametrize(
  "holds, kind",
  [
    ({"config.json": {"kind": "dit", "config": {}}}, "checkpoint"),
    ({"config.json": {"train": {}, "data": {}, "model": {}}}, "run"),
    ({"config.json": {"_class_name": "WanTransformer3DModel"}}, "diffusers"),
    ({"config.json": {"hidden_size": 8}}, "weights"),
    ({"dataset_info.json": {}}, "cache"),
    ({"model.pth": {}}, "weights"),
  ],
)
def test_an_unmarked_folder_is_known_by_its_config_json_or_files(tmp_path, holds, kind):
  for name, content in holds.items():
    (tmp_path / name).write_text(json.dumps(content))
  assert files.folder_kind(tmp_path) == kind


def test_a_bad_marker_is_refused_naming_the_file(tmp_path):
  (tmp_path / files.MARKER).write_text(json.dumps({"artifact": "spaceship"}))
  with pytest.raises(ValueError, match=f"{tmp_path / files.MARKER}: artifact='spaceship', expected one of"):
    files.folder_kind(tmp_path)
  (tmp_path / files.MARKER).write_text("[1]")
  with pytest.raises(ValueError, match=f"{tmp_path / files.MARKER}: not a JSON object"):
    files.folder_kind(tmp_path)


def test_require_kind_names_the_flag_the_folder_and_what_was_expected(tmp_path):
  files.mark(tmp_path / "ckpt", "checkpoint")
  assert files.require_kind(tmp_path / "ckpt", ("checkpoint",), "--src") == "checkpoint"
  assert files.require_kind(tmp_path / "new", (None, "run"), "--workdir") is None
  with pytest.raises(ValueError, match=f"^--workdir={tmp_path / 'ckpt'}: a converted checkpoint, not a new folder or"):
    files.require_kind(tmp_path / "ckpt", (None, "run"), "--workdir")
  with pytest.raises(FileNotFoundError, match="^--src=.*: no such folder, or an empty one; expected a converted check"):
    files.require_kind(tmp_path / "missing", ("checkpoint",), "--src")


# ------------------------------------------------------------------------------ whole folders
def test_write_folder_writes_a_new_folder_marked(tmp_path):
  files.write_folder(tmp_path / "out", "checkpoint", lambda tmp: (tmp / "params.bin").write_bytes(b"1"))
  assert sorted(os.listdir(tmp_path / "out")) == [files.MARKER, "params.bin"]
  assert files.folder_kind(tmp_path / "out") == "checkpoint" and _hidden(tmp_path) == []


def test_write_folder_replaces_the_old_folder_whole(tmp_path):
  files.write_folder(tmp_path / "out", "checkpoint", lambda tmp: (tmp / "old.bin").write_bytes(b"1"))
  files.write_folder(tmp_path / "out", "checkpoint", lambda tmp: (tmp / "new.bin").write_bytes(b"2"))
  assert sorted(os.listdir(tmp_path / "out")) == [files.MARKER, "new.bin"] and _hidden(tmp_path) == []


def test_an_interrupted_write_folder_keeps_the_old_folder(tmp_path):
  files.write_folder(tmp_path / "out", "checkpoint", lambda tmp: (tmp / "old.bin").write_bytes(b"1"))

  def fill(tmp):
    (tmp / "new.bin").write_bytes(b"2")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    files.write_folder(tmp_path / "out", "checkpoint", fill)
  assert sorted(os.listdir(tmp_path / "out")) == [files.MARKER, "old.bin"] and _hidden(tmp_path) == []


def test_write_folder_refuses_a_folder_of_another_kind_and_leaves_it(tmp_path):
  files.mark(tmp_path / "run", "run")
  with pytest.raises(ValueError, match=f"--out={tmp_path / 'run'}: a training run's workdir, not a new folder or"):
    files.write_folder(tmp_path / "run", "checkpoint", lambda tmp: None)
  assert files.folder_kind(tmp_path / "run") == "run"


# ------------------------------------------------------------------------------ apart, and ids
def test_check_apart_refuses_the_same_path_or_one_inside_the_other(tmp_path):
  src = tmp_path / "src"
  with pytest.raises(ValueError, match=r"--out=.*/src is the --src checkpoint \(.*\); choose another --out"):
    files.check_apart(src, src, "--out", "the --src checkpoint")
  with pytest.raises(ValueError, match=r"--out=.*/src/sub is inside the --src checkpoint"):
    files.check_apart(src / "sub", src, "--out", "the --src checkpoint")
  with pytest.raises(ValueError, match=r"--out=.* holds the --src checkpoint"):
    files.check_apart(tmp_path, src, "--out", "the --src checkpoint")
  files.check_apart(tmp_path / "src2", src, "--out", "the --src checkpoint")  # a sibling with the same prefix
  (tmp_path / "real").mkdir()
  os.symlink(tmp_path / "real", tmp_path / "link")
  with pytest.raises(ValueError, match="is the --src checkpoint"):  # the same folder through a symlink
    files.check_apart(tmp_path / "link", tmp_path / "real", "--out", "the --src checkpoint")


def test_check_ids_returns_strings_and_names_every_bad_row():
  assert files.check_ids([1, "a-b_c.2"]) == ["1", "a-b_c.2"]
  with pytest.raises(ValueError) as e:
    files.check_ids(["ok", "../x", ".hidden", "ok", "a b"], "task id")
  assert str(e.value) == (
    "task id: 4 bad (allowed: [A-Za-z0-9_.-]+, no leading dot, no duplicates): "
    "row 2: '../x'; row 3: '.hidden'; row 5: 'a b'; row 4: 'ok' (duplicate)"
  )
  with pytest.raises(ValueError, match=r"id: 12 bad .*row 10: '/10' \.\.\.$"):
    files.check_ids([f"/{i}" for i in range(1, 13)])
  with pytest.raises(ValueError) as e:  # a `what` that ends in a path keeps the path as given
    files.check_ids(["a b"], what="prompt id in /tmp/prompts.jsonl")
  assert str(e.value).startswith("prompt id in /tmp/prompts.jsonl: 1 bad")
