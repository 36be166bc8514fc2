"""TFDS builder for microsim_synth: procedurally generated micro-world clips (ArrayRecord).

Deterministic in (num_clips, seed, num_frames, size, fps, extra_train_clips); these build settings are stored
in the dataset's metadata. The last max(1, num_clips // 10) clips form the validation split; the others, and
clips num_clips .. num_clips + extra_train_clips - 1 (more training data, the same validation clips), the
train split.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds

from microverse_jax import video
from microverse_jax.datasets import clip_features, dataset_info
from microverse_jax.datasets.microsim_synth import processes
from microverse_jax.datasets.microsim_synth.processes import DEFAULTS, split_of


class MicrosimSynth(tfds.core.GeneratorBasedBuilder):
  """Procedural microscopy clips (Brownian motion, Poiseuille flow, division, sedimentation, chemotaxis)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Five processes, mp4 video, ground-truth params and tracks."}

  def __init__(
    self,
    *,
    num_clips: int = DEFAULTS["num_clips"],
    seed: int = DEFAULTS["seed"],
    num_frames: int = DEFAULTS["num_frames"],
    size: int = DEFAULTS["size"],
    fps: float = DEFAULTS["fps"],
    extra_train_clips: int = 0,
    **kwargs,
  ):
    if num_clips < 2:
      raise ValueError(f"num_clips must be >= 2 (train and validation splits), got {num_clips}")
    if num_frames < 1 or size < 8 or size % 2:
      raise ValueError(f"need num_frames >= 1 and an even size >= 8, got {num_frames} and {size}")
    if extra_train_clips < 0:
      raise ValueError(f"extra_train_clips must be >= 0, got {extra_train_clips}")
    self.build_settings = {
      "num_clips": int(num_clips),
      "seed": int(seed),
      "num_frames": int(num_frames),
      "size": int(size),
      "fps": float(fps),
      "extra_train_clips": int(extra_train_clips),
    }
    super().__init__(**{"file_format": "array_record", **kwargs})

  def _info(self) -> tfds.core.DatasetInfo:
    return dataset_info(
      self,
      description=__doc__,
      features=clip_features(
        process=tfds.features.Text(doc=f"one of {processes.PROCESSES}"),
        params=tfds.features.Text(doc="ground-truth parameters, JSON; units px and frames"),
        tracks=tfds.features.Tensor(
          shape=(None, None, 2),
          dtype=np.float32,
          encoding=tfds.features.Encoding.ZLIB,
          doc="body centres (F, N, 2) as (y, x) px",
        ),
      ),
      metadata=tfds.core.MetadataDict(build_settings=self.build_settings),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    n, extra = self.build_settings["num_clips"], self.build_settings["extra_train_clips"]
    return {
      split: self._generate_examples([i for i in range(n + extra) if split_of(i, n) == split])
      for split in ("train", "validation")
    }

  def _generate_examples(self, indices):
    s = self.build_settings
    for i in indices:
      spec = processes.clip_spec(i, seed=s["seed"], num_frames=s["num_frames"], size=s["size"], fps=s["fps"])
      frames = processes.render_clip(
        spec.process, spec.params, num_frames=s["num_frames"], size=s["size"], seed=spec.seed
      )
      tracks = processes.simulate_tracks(
        spec.process, spec.params, num_frames=s["num_frames"], size=s["size"], seed=spec.seed
      )
      clip_id = f"synth_{i:06d}"
      yield (
        clip_id,
        {
          "id": clip_id,
          "caption": spec.caption,
          "video": video.encode_mp4(frames, s["fps"], crf=15),
          "num_frames": s["num_frames"],
          "fps": s["fps"],
          "height": s["size"],
          "width": s["size"],
          "process": spec.process,
          "params": json.dumps(spec.params, sort_keys=True),
          "tracks": tracks,
        },
      )
