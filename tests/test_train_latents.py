"""Training from a latent cache (issue 25, item 5): no encoder paths needed (the cache holds both
encodings, and its context width is what the DiT must take), and a cache written for another size,
text length or model is refused before anything compiles, naming the config's value and the cache's."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import losses, tiny_config

from microverse_jax import encode, input_pipeline, train

FRAMES, SIZE, TEXT_LENGTH, CONTEXT_WIDTH = 9, 32, 16, 40  # the cache: conftest's dataset, 16 tokens of width 40


@pytest.fixture(scope="module")
def cache_dir(synth_data_dir, tmp_path_factory):
  """A pixel-space latent cache of the train split: latents are the clips, context a fixed function of the ids."""
  out = str(tmp_path_factory.mktemp("cache"))
  encode.encode_split(
    input_pipeline.load_source("microsim_synth", "train", synth_data_dir),
    out,
    dataset="microsim_synth",
    split="train",
    video_encoder=lambda video: video,
    text_encoder=lambda ids, mask: np.where(mask[..., None], ids[..., None] / 256.0, 0.0) * np.ones(CONTEXT_WIDTH),
    tokenizer=input_pipeline.ByteTokenizer(TEXT_LENGTH),
    num_frames=FRAMES,
    height=SIZE,
    width=SIZE,
    batch_size=4,
    shard_size=16,
    process_index=0,
    process_count=1,
  )
  return out


def _config(cache_dir, **overrides):
  settings = {
    "data.name": "microsim_synth_latents",
    "data.source": "latents",
    "data.num_frames": FRAMES,
    "data.height": SIZE,
    "data.width": SIZE,
    "text.max_length": TEXT_LENGTH,
    "model.text_dim": CONTEXT_WIDTH,
    "text.preset": "umt5-xxl",  # not the DiT's width, and no text.init_from: the cache decides
    "text.tokenizer": "/nonexistent/tokenizer.json",
    "train.caption_dropout": 0.0,
    "train.num_steps": 2,
  }
  return tiny_config(cache_dir, **{**settings, **overrides})


def test_training_from_latents_needs_no_encoder_paths(cache_dir, tmp_path):
  train.train(_config(cache_dir), str(tmp_path))
  assert sorted(losses(str(tmp_path))) == [1, 2]


@pytest.mark.parametrize(
  "key,value,says",
  [
    ("data.height", 64, "data.height=64, but the latent cache {cache} holds height 32: set it to 32"),
    (
      "data.num_frames",
      17,
      "data.num_frames=17, but the latent cache {cache} holds num_frames 9: set it to 9 or fewer",
    ),
    ("text.max_length", 8, "text.max_length=8, but the latent cache {cache} holds text_length 16: set it to 16"),
    ("model.text_dim", 32, "model.text_dim=32, but the latent cache {cache} holds context width 40: set it to 40"),
  ],
)
def test_a_cache_written_for_other_settings_is_refused_naming_both(cache_dir, tmp_path, key, value, says):
  cache = f"{cache_dir}/microsim_synth_latents"
  with pytest.raises(ValueError) as e:
    train.train(_config(cache_dir, **{key: value}), str(tmp_path))
  assert str(e.value) == says.format(cache=cache)
  assert not (tmp_path / "checkpoints").exists()
