"""Builds a TFDS dataset without TensorFlow (the `tfds build` CLI needs TensorFlow; this does not).

  python -m microverse_jax.build_dataset microsim10k --manual_dir=DIR --data_dir=DIR
      [--metadata=NAME_OR_GLOB --video_key=K --caption_key=K --id_key=K --follow_symlinks
       --max_file_mb=512]
  python -m microverse_jax.build_dataset microsim_synth --data_dir=DIR [--num_clips=N --seed=S]
      [--num_frames=F --size=S --extra_train_clips=N --export_prompts=PATH]

`data_dir` may be a gs:// path. The dataset lands in DATA_DIR/<name>/<version>/ and reads back with
`tfds.builder_from_directory` or `input_pipeline.load_source(name, split, data_dir)`. microsim10k lists
the rows it skipped in DATA_DIR/microsim10k/<version>/skipped.jsonl; the layouts it reads are in
docs/data.md. Progress (done/total, rate, ETA): a tqdm bar when stderr is a terminal, else a line
on stdout every 30 s and at the end.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import tensorflow_datasets as tfds
from etils import epath
from jax.experimental import multihost_utils

from microverse_jax import input_pipeline

DATASETS = ("microsim10k", "microsim_synth")


class Progress:
  """Clips done of a total with rate and ETA: a tqdm bar when stderr is a terminal, else a line on
  stdout every `every_s` seconds and at the end (the format of cli.progress_line)."""

  def __init__(self, desc: str, *, every_s: float = 30.0, tty: bool | None = None, stream=None):
    self.desc, self.every_s, self.stream = desc, every_s, stream
    self.tty = sys.stderr.isatty() if tty is None else tty
    self.total = self.done = 0
    self.bar = None
    self.started = self.last = 0.0

  def start(self, total: int) -> None:
    self.total, self.done = int(total), 0
    self.started = self.last = time.monotonic()
    if self.tty:
      import tqdm  # pylint: disable=g-import-not-at-top

      self.bar = tqdm.tqdm(total=self.total, desc=self.desc, unit="clip", dynamic_ncols=True)

  def update(self, n: int = 1) -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
      return
    now = time.monotonic()
    if now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      print(self.line(now - self.started), file=self.stream or sys.stdout, flush=True)

  def line(self, elapsed: float) -> str:
    """'desc 50/2400 (2%) 4.2/s ETA 9m20s'."""
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = int(round((self.total - self.done) / rate)) if rate > 0 else None
    eta_text = (
      "?"
      if eta is None
      else (f"{eta // 3600}h{eta % 3600 // 60:02d}m" if eta >= 3600 else f"{eta // 60}m{eta % 60:02d}s")
    )
    return (
      f"{self.desc} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%) {rate:.3g}/s ETA {eta_text}"
    )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _counted(generate, progress: Progress):
  """Wraps a builder's _generate_examples so every example yielded advances `progress`."""

  def wrapped(*args, **kwargs):
    for example in generate(*args, **kwargs):
      yield example
      progress.update(1)

  return wrapped


def _existing_settings(path: epath.Path) -> dict | None:
  """The build settings of the microsim_synth dataset at `path` (None: not built); datasets built before
  extra_train_clips existed have none."""
  if not (path / "dataset_info.json").exists():
    return None
  settings = dict(tfds.builder_from_directory(str(path)).info.metadata or {}).get("build_settings")
  return None if settings is None else {"extra_train_clips": 0, **settings}


def build(
  name: str,
  data_dir: str,
  *,
  manual_dir: str | None = None,
  metadata: str | None = None,
  video_key: str | None = None,
  caption_key: str | None = None,
  id_key: str | None = None,
  follow_symlinks: bool = False,
  max_file_mb: float | None = None,
  validation_fraction: float = 0.05,
  num_clips: int | None = None,
  seed: int | None = None,
  num_frames: int | None = None,
  size: int | None = None,
  extra_train_clips: int | None = None,
  overwrite: bool = False,
  export_prompts: str | None = None,
  log=None,
  progress: Progress | None = None,
) -> epath.Path:
  """Builds dataset `name` under `data_dir` and returns its directory (DATA_DIR/name/version).

  `log` receives what microsim10k's autodetection found (one line per metadata file); `progress`
  shows clips done of the total (None: no progress display).
  """
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  if name == "microsim10k":
    from microverse_jax.datasets.microsim10k import DEFAULT_MAX_FILE_MB, Microsim10k  # pylint: disable=g-import-not-at-top

    if not manual_dir or not epath.Path(manual_dir).is_dir():
      raise ValueError(f"microsim10k needs --manual_dir, the downloaded MicroSim-10K directory; got {manual_dir!r}")
    builder = Microsim10k(
      data_dir=data_dir,
      metadata_file=metadata,
      video_key=video_key,
      caption_key=caption_key,
      id_key=id_key,
      follow_symlinks=follow_symlinks,
      max_file_mb=max_file_mb or DEFAULT_MAX_FILE_MB,
      validation_fraction=validation_fraction,
      log=log,
      progress=progress,
    )
    try:
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
      )
    finally:
      if progress is not None:
        progress.close()
    return builder.data_path
  if name == "microsim_synth":
    from microverse_jax.datasets.microsim_synth import MicrosimSynth, export_prompts as write_prompts

    given = dict(num_clips=num_clips, seed=seed, num_frames=num_frames, size=size, extra_train_clips=extra_train_clips)
    settings = {k: v for k, v in given.items() if v is not None}
    builder = MicrosimSynth(data_dir=data_dir, **settings)
    existing = _existing_settings(builder.data_path)
    if existing is not None and existing != builder.build_settings and not overwrite:
      raise ValueError(
        f"{builder.data_path} holds microsim_synth built with {existing}, not "
        f"{builder.build_settings}; pass --overwrite or another --data_dir"
      )
    if progress is not None:  # the builder has no progress hook: count what its generator yields
      progress.start(builder.build_settings["num_clips"] + builder.build_settings["extra_train_clips"])
      builder._generate_examples = _counted(builder._generate_examples, progress)  # pylint: disable=protected-access
    try:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    finally:
      if progress is not None:
        progress.close()
    if export_prompts:
      write_prompts(export_prompts, **builder.build_settings)
    return builder.data_path
  raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def ensure_offline(name: str, data_dir: str) -> None:
  """Builds the offline procedural dataset (microsim_synth, ~15 s) where `data_dir` lacks it, once for all JAX
  processes (a process whose data_dir is its own local disk builds its own copy); other datasets: nothing."""
  data_dir = str(epath.Path(data_dir).expanduser())

  def present() -> bool:
    try:
      input_pipeline.load_source(name, "train", data_dir)
      return True
    except ValueError:
      return False

  if name != "microsim_synth" or present():
    return
  if jax.process_index() == 0:
    print(f"building microsim_synth in {data_dir} ...", flush=True)
    tfds.disable_progress_bar()  # our own progress line instead of TFDS's bars
    build("microsim_synth", data_dir, progress=Progress("build microsim_synth"))
  multihost_utils.sync_global_devices("microsim_synth built")
  if not present():
    build("microsim_synth", data_dir)


def parser():
  """The command line of `python -m microverse_jax.build_dataset`."""
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  p = cli.argument_parser(__doc__, "python -m microverse_jax.build_dataset")
  p.add_argument("name", choices=DATASETS, help="the dataset to build")
  p.add_argument(
    "--data_dir",
    "--out",
    dest="data_dir",
    required=True,
    metavar="DIR",
    help="output root, a TFDS data_dir (local or gs://): what encode --data_dir and the config's data.data_dir read",
  )
  p.add_argument("--manual_dir", help="microsim10k: the downloaded release directory (or hub-cache snapshot)")
  p.add_argument(
    "--metadata",
    help="microsim10k: metadata file name or glob inside manual_dir, e.g. "
    "'train/metadata.jsonl' or 'data/*.parquet' (default: autodetect, see docs/data.md)",
  )
  p.add_argument("--video_key", help="microsim10k: the video path column (default: video, else file_name)")
  p.add_argument("--caption_key", help="microsim10k: the caption column (default: prompt, text, caption)")
  p.add_argument("--id_key", help="microsim10k: the id column (default: id if present, else the video path)")
  p.add_argument(
    "--follow_symlinks",
    action="store_true",
    help="microsim10k: follow symlinks that land outside manual_dir (links into a Hugging "
    "Face hub cache's blobs/ are followed without it)",
  )
  p.add_argument("--max_file_mb", type=float, default=None, help="microsim10k: larger videos are skipped (default 512)")
  p.add_argument(
    "--validation_fraction",
    type=float,
    default=0.05,
    help="microsim10k: share of ids held out where no split is published (default 0.05)",
  )
  p.add_argument("--num_clips", type=int, help="microsim_synth: number of clips (default 320)")
  p.add_argument("--seed", type=int, help="microsim_synth: base seed (default 0)")
  p.add_argument("--num_frames", type=int, help="microsim_synth: frames per clip (default 17)")
  p.add_argument("--size", type=int, help="microsim_synth: frame height = width in px (default 64)")
  p.add_argument(
    "--extra_train_clips",
    type=int,
    help="microsim_synth: more training clips (numbers num_clips on); the validation split stays (default 0)",
  )
  p.add_argument("--export_prompts", help="microsim_synth: also write prompts + ground truth as JSONL here")
  p.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
  return p


def main(argv: list[str] | None = None) -> None:
  args = parser().parse_args(argv)
  tfds.disable_progress_bar()
  path = build(
    args.name,
    args.data_dir,
    manual_dir=args.manual_dir,
    metadata=args.metadata,
    video_key=args.video_key,
    caption_key=args.caption_key,
    id_key=args.id_key,
    follow_symlinks=args.follow_symlinks,
    max_file_mb=args.max_file_mb,
    validation_fraction=args.validation_fraction,
    num_clips=args.num_clips,
    seed=args.seed,
    num_frames=args.num_frames,
    size=args.size,
    extra_train_clips=args.extra_train_clips,
    overwrite=args.overwrite,
    export_prompts=args.export_prompts,
    log=lambda line: print(f"{args.name}: {line}", flush=True),
    progress=Progress(f"build {args.name}"),
  )
  info = tfds.builder_from_directory(str(path)).info
  summary = {"path": str(path), "splits": {k: v.num_examples for k, v in info.splits.items()}}
  skipped = path / "skipped.jsonl"
  if skipped.exists():
    summary["skipped"] = sum(1 for line in skipped.read_text().splitlines() if line.strip())
    summary["skipped_report"] = str(skipped)
  print(json.dumps(summary))


if __name__ == "__main__":
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  cli.main_guard(main)
