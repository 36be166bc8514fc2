"""batches: the global batch shapes of a plan (`batch_spec`), this process's iterator over raw video or a latent
cache giving exactly those (`load_batches`, `to_global`), and a cache of another size refused naming the key."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_latent_cache import records, write_cache
from train_helpers import tiny_config

from microverse_jax import batches, encoders, input_pipeline, plans, sharding

# the latent cache of test_latent_cache (5 frames of 16 x 16, text_length 6, context width 8) read by the tiny config
LATENTS = {"data.name": "toy_latents", "data.source": "latents", "train.caption_dropout": 0.0}
LATENTS.update({"text.max_length": 6, "model.text_dim": 8})


def _spec(batch):
  return {k: (v.shape, v.dtype) for k, v in batch.items()}


def test_batch_spec_of_raw_video():
  spec = batches.batch_spec(plans.resolve(tiny_config(""), 1))
  assert _spec(spec) == {
    "video": ((4, 5, 16, 16, 3), jnp.float32),
    "text_ids": ((4, 32), jnp.int32),
    "text_mask": ((4, 32), jnp.bool_),
  }


def test_batch_spec_of_a_latent_cache_follows_the_autoencoder():
  spec = batches.batch_spec(plans.resolve(tiny_config("", **LATENTS), 1))
  assert _spec(spec) == {
    "latents": ((4, 5, 16, 16, 3), jnp.float32),  # pixel space: the clip itself
    "context": ((4, 6, 8), jnp.float32),
    "context_mask": ((4, 6), jnp.bool_),
  }
  tiny_vae = {"autoencoder.kind": "wan_vae", "autoencoder.preset": "tiny", "model.in_channels": 4}
  spec = batches.batch_spec(plans.resolve(tiny_config("", **LATENTS, **tiny_vae, **{"model.out_channels": 4}), 1))
  assert spec["latents"].shape == (4, 3, 4, 4, 4)  # the tiny VAE: 1 + (5 - 1) / 2 frames, 16 / 4 pixels, 4 channels


def test_to_global_shards_the_batch_axis_and_drops_the_index():
  plan = plans.resolve(tiny_config(""), 1)
  mesh = sharding.make_mesh(plan.mesh_shape)
  assert batches.batch_sharding(mesh, plan.rules).spec == P(("data", "fsdp"))
  local = {"video": np.arange(4 * 3, dtype=np.float32).reshape(4, 3), "index": np.arange(4)}
  out = batches.to_global(local, mesh, plan.rules)
  assert set(out) == {"video"} and isinstance(out["video"], jax.Array)
  assert out["video"].sharding.is_equivalent_to(batches.batch_sharding(mesh, plan.rules), 2)
  np.testing.assert_array_equal(np.asarray(out["video"]), local["video"])


def test_raw_video_batches_are_the_shapes_of_the_spec(synth_data_dir):
  plan = plans.resolve(tiny_config(synth_data_dir), 1)
  mesh = sharding.make_mesh(plan.mesh_shape)
  it = batches.load_batches(plan, encoders.build_tokenizer(plan.c), "train", seed=0, shuffle=False)
  batch = batches.to_global(next(it), mesh, plan.rules)
  assert _spec(batch) == _spec(batches.batch_spec(plan))
  assert -1.0 <= float(batch["video"].min()) < float(batch["video"].max()) <= 1.0  # the model's range
  assert bool(batch["text_mask"][:, 0].all())  # every clip has a caption


def test_latent_cache_batches_are_the_shapes_of_the_spec(tmp_path):
  write_cache(tmp_path, records(4, shape=(5, 16, 16, 3)))
  plan = plans.resolve(tiny_config(str(tmp_path), **LATENTS), 1)
  it = batches.load_batches(plan, None, "train", seed=0, shuffle=False)
  batch = batches.to_global(next(it), sharding.make_mesh(plan.mesh_shape), plan.rules)
  assert _spec(batch) == _spec(batches.batch_spec(plan))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"data.height": 32}, "data.height=32, but the latent cache {where} holds height 16: set it to 16"),
    (
      {"data.num_frames": 9},
      "data.num_frames=9, but the latent cache {where} holds num_frames 5: set it to 5 or fewer",
    ),
    ({"data.frame_stride": 2}, "data.frame_stride=2, but the latent cache {where} holds frame_stride 1: set it to 1"),
    ({"text.max_length": 8}, "text.max_length=8, but the latent cache {where} holds text_length 6: set it to 6"),
    ({"model.text_dim": 16}, "model.text_dim=16, but the latent cache {where} holds context width 8: set it to 8"),
  ],
)
def test_a_latent_cache_of_another_size_is_refused_naming_the_key(tmp_path, overrides, message):
  write_cache(tmp_path, records(1, shape=(5, 16, 16, 3)))
  where = tmp_path / "toy_latents"
  plan = plans.resolve(tiny_config(str(tmp_path), **{**LATENTS, **overrides}), 1)
  with pytest.raises(ValueError, match=f"^{re.escape(message.format(where=where))}$"):
    batches.load_batches(plan, None, "train", seed=0, shuffle=False)


def test_fewer_frames_and_the_channels_of_a_latent_cache(tmp_path):
  write_cache(tmp_path, records(4, shape=(5, 16, 16, 3)))
  source = input_pipeline.load_source("toy_latents", "train", str(tmp_path))
  plan = plans.resolve(tiny_config(str(tmp_path), **LATENTS, **{"data.num_frames": 1}), 1)
  batches.check_latent_cache(plan, source, "here")  # fewer frames than the cache's: the first latents
  c = tiny_config(str(tmp_path), **LATENTS, **{"autoencoder.kind": "wan_vae", "autoencoder.preset": "tiny"})
  c.model.update(in_channels=4, out_channels=4)
  with pytest.raises(ValueError, match="^model.in_channels=4, but the latent cache here holds latent channels 3"):
    batches.check_latent_cache(plans.resolve(c, 1), source, "here")


def test_a_latent_cache_of_another_vae_is_refused(tmp_path):
  """Same size, text and channels, but another VAE's grid (Wan2.1's 8x where the run's is Wan2.2's 16x): refused,
  not trained on at the cache's grid."""
  write_cache(tmp_path, records(1, shape=(5, 16, 16, 4)))
  source = input_pipeline.load_source("toy_latents", "train", str(tmp_path))
  c = tiny_config(str(tmp_path), **LATENTS, **{"autoencoder.kind": "wan_vae", "autoencoder.preset": "tiny"})
  c.model.update(in_channels=4, out_channels=4)
  message = "the latent cache here holds latents of 16x16 per frame, but the autoencoder (autoencoder.init_from="
  with pytest.raises(ValueError, match=f"^{re.escape(message)}.* makes 4x4 of 16x16: it was encoded by another VAE"):
    batches.check_latent_cache(plans.resolve(c, 1), source, "here")
