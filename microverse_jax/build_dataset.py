"""Builds a TFDS dataset without TensorFlow (the `tfds build` CLI needs TensorFlow; this does not).

  python -m microverse_jax.build_dataset microsim10k --manual_dir=DIR --data_dir=DIR
  python -m microverse_jax.build_dataset microsim_synth --data_dir=DIR [--num_clips=N --seed=S]
      [--num_frames=F --size=S --export_prompts=PATH]

`data_dir` may be a gs:// path. The dataset lands in DATA_DIR/<name>/<version>/ and reads back with
`tfds.builder_from_directory` or `input_pipeline.load_source(name, split, data_dir)`. microsim10k lists
the rows it skipped in DATA_DIR/microsim10k/<version>/skipped.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys

import tensorflow_datasets as tfds
from etils import epath

DATASETS = ("microsim10k", "microsim_synth")


def _existing_settings(path: epath.Path) -> dict | None:
  if not (path / "dataset_info.json").exists():
    return None
  return dict(tfds.builder_from_directory(str(path)).info.metadata or {}).get("build_settings")


def build(name: str, data_dir: str, *, manual_dir: str | None = None, metadata: str | None = None,
          validation_fraction: float = 0.05, num_clips: int | None = None, seed: int | None = None,
          num_frames: int | None = None, size: int | None = None, overwrite: bool = False,
          export_prompts: str | None = None) -> epath.Path:
  """Builds dataset `name` under `data_dir` and returns its directory (DATA_DIR/name/version)."""
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  if name == "microsim10k":
    from data.microsim10k import Microsim10k  # pylint: disable=g-import-not-at-top
    if not manual_dir or not epath.Path(manual_dir).is_dir():
      raise ValueError(f"microsim10k needs --manual_dir, the downloaded MicroSim-10K directory; got {manual_dir!r}")
    builder = Microsim10k(data_dir=data_dir, metadata_file=metadata, validation_fraction=validation_fraction)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=mode))
    return builder.data_path
  if name == "microsim_synth":
    from data.microsim_synth import MicrosimSynth, export_prompts as write_prompts  # pylint: disable=g-import-not-at-top
    settings = {k: v for k, v in dict(num_clips=num_clips, seed=seed, num_frames=num_frames,
                                      size=size).items() if v is not None}
    builder = MicrosimSynth(data_dir=data_dir, **settings)
    existing = _existing_settings(builder.data_path)
    if existing is not None and existing != builder.build_settings and not overwrite:
      raise ValueError(f"{builder.data_path} holds microsim_synth built with {existing}, not "
                       f"{builder.build_settings}; pass --overwrite or another --data_dir")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    if export_prompts:
      write_prompts(export_prompts, **builder.build_settings)
    return builder.data_path
  raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", choices=DATASETS)
  parser.add_argument("--data_dir", required=True, help="output root (local or gs://)")
  parser.add_argument("--manual_dir", help="microsim10k: the downloaded release directory")
  parser.add_argument("--metadata", help="microsim10k: metadata file name inside manual_dir (default: the only one)")
  parser.add_argument("--validation_fraction", type=float, default=0.05, help="microsim10k: share of ids held out")
  parser.add_argument("--num_clips", type=int, help="microsim_synth: number of clips (default 320)")
  parser.add_argument("--seed", type=int, help="microsim_synth: base seed (default 0)")
  parser.add_argument("--num_frames", type=int, help="microsim_synth: frames per clip (default 17)")
  parser.add_argument("--size", type=int, help="microsim_synth: frame height = width in px (default 64)")
  parser.add_argument("--export_prompts", help="microsim_synth: also write prompts + ground truth as JSONL here")
  parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
  args = parser.parse_args(argv)
  tfds.disable_progress_bar()
  path = build(args.name, args.data_dir, manual_dir=args.manual_dir, metadata=args.metadata,
               validation_fraction=args.validation_fraction, num_clips=args.num_clips, seed=args.seed,
               num_frames=args.num_frames, size=args.size, overwrite=args.overwrite,
               export_prompts=args.export_prompts)
  info = tfds.builder_from_directory(str(path)).info
  summary = {"path": str(path), "splits": {k: v.num_examples for k, v in info.splits.items()}}
  skipped = path / "skipped.jsonl"
  if skipped.exists():
    summary["skipped"] = sum(1 for line in skipped.read_text().splitlines() if line.strip())
    summary["skipped_report"] = str(skipped)
  print(json.dumps(summary))


if __name__ == "__main__":
  main(sys.argv[1:])
