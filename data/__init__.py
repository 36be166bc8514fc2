"""TFDS dataset builders (ArrayRecord, no TensorFlow needed) and what they share.

Every dataset stores clips with the same core features, so one Grain pipeline reads them all:
  id (str), caption (str), video (the encoded mp4 bytes as stored), num_frames, fps, height, width.
Build them with `python -m microverse_jax.build_dataset NAME --data_dir=DIR`.
"""

from __future__ import annotations

import hashlib

import numpy as np


def clip_features(**extra):
  """The shared clip features (a tfds FeaturesDict), plus dataset-specific `extra` ones."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # the generator needs no TFDS

  return tfds.features.FeaturesDict(
    {
      "id": tfds.features.Text(),
      "caption": tfds.features.Text(),
      "video": tfds.features.Scalar(dtype=np.object_, doc="encoded video bytes (mp4), as stored"),
      "num_frames": tfds.features.Scalar(dtype=np.int32, doc="decodable frames"),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      **extra,
    }
  )


def dataset_info(builder, **fields):
  """A tfds DatasetInfo for `builder` that never asks TFDS's public bucket for precomputed info: no
  dataset of ours is there, and the probe leaves an empty /tmp/tmp*tfds folder per unprepared builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  info = tfds.core.DatasetInfo(builder=builder, **fields)
  info.initialize_from_bucket = lambda: None
  return info


def id_hash_fraction(clip_id: str) -> float:
  """A stable number in [0, 1) from a clip id (sha256), for deterministic split assignment."""
  return int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
