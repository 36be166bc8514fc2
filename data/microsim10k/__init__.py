"""microsim10k: the MicroSim-10K release (manual download) as an ArrayRecord TFDS dataset."""

from data.microsim10k.microsim10k_dataset_builder import (SKIPPED_FILENAME, Microsim10k,
                                                          find_metadata_file, read_metadata,
                                                          safe_relative_path)

__all__ = ["SKIPPED_FILENAME", "Microsim10k", "find_metadata_file", "read_metadata", "safe_relative_path"]
