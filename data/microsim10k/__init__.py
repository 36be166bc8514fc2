"""microsim10k: the MicroSim-10K release (manual download) as an ArrayRecord TFDS dataset."""

from microverse_jax.datasets.microsim10k.layouts import Keys, find_metadata, parse_rows, path_split, read_metadata
from microverse_jax.datasets.microsim10k.microsim10k_dataset_builder import (
  DEFAULT_MAX_FILE_MB,
  SKIPPED_FILENAME,
  Microsim10k,
)
from microverse_jax.datasets.microsim10k.safe_files import Reader, Unusable, hub_blobs_dir, safe_relative_path

__all__ = [
  "DEFAULT_MAX_FILE_MB",
  "SKIPPED_FILENAME",
  "Keys",
  "Microsim10k",
  "Reader",
  "Unusable",
  "find_metadata",
  "hub_blobs_dir",
  "parse_rows",
  "path_split",
  "read_metadata",
  "safe_relative_path",
]
