"""encoders: the tokenizers by name, shardings from logical axis names (a dimension its mesh axes do not divide is
replicated), the one loader of frozen models (a checkpoint into its shardings and dtype, or a seeded init it says
is random), and the frozen text encoder and autoencoder of a plan."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P
from train_helpers import tiny_config

from microverse_jax import convert, encoders, input_pipeline, plans, sharding
from microverse_jax.models.umt5 import UMT5Config, UMT5Encoder
from microverse_jax.models.wan_vae import WanVAEConfig


@pytest.fixture(scope="module")
def plan():
  return plans.resolve(tiny_config(""), 1)


@pytest.fixture(scope="module")
def mesh(plan):
  return sharding.make_mesh(plan.mesh_shape)


def _leaves(module):
  return jax.tree.leaves(nnx.state(module, nnx.Param).to_pure_dict())


# ------------------------------------------------------------------------------ tokenizers
def test_offline_tokenizers_by_name_and_a_folder_without_tokenizer_files(tmp_path):
  c = tiny_config("")
  tokenizer = encoders.build_tokenizer(c)
  assert isinstance(tokenizer, input_pipeline.ByteTokenizer) and tokenizer.max_length == c.text.max_length == 32
  ids, mask = tokenizer(["ab", ""])
  assert (
    ids.shape == (2, 32) and ids[0, :3].tolist() == [ord("a") + 3, ord("b") + 3, 1] and mask.sum(1).tolist() == [3, 1]
  )
  c.text.update(tokenizer="microsim_params", max_length=24)
  assert type(encoders.build_tokenizer(c)).__name__ == "ParamTokenizer"
  c.text.tokenizer = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=f"no umT5 tokenizer in {tmp_path}: expected tokenizer.json or spiece"):
    encoders.build_tokenizer(c)


# ------------------------------------------------------------------------------ shardings
def test_shardings_follow_the_logical_names_and_replicate_what_does_not_divide(plan):
  _, state = nnx.split(nnx.eval_shape(lambda: UMT5Encoder(plan.text, rngs=nnx.Rngs(0))))
  mesh = AbstractMesh((1, 2, 2, 1), sharding.MESH_AXES)
  shard = encoders.shardings_of(state, mesh, plan.rules)
  assert shard["blocks"]["q"]["kernel"].spec == P(None, "fsdp", "tensor")  # (layers, embed, heads)
  assert shard["blocks"]["wo"]["kernel"].spec == P(None, "tensor", "fsdp")  # (layers, mlp, embed)
  assert shard["token_embedding"].spec == P(None, "fsdp")  # a 259-byte vocabulary does not split over tensor=2
  odd = encoders.shardings_of(state, AbstractMesh((1, 3, 1, 1), sharding.MESH_AXES), plan.rules)
  assert odd["final_norm"]["scale"].spec == P(None)  # width 32 over fsdp=3: replicated
  assert jax.tree.structure(shard) == jax.tree.structure(state.to_pure_dict())


# ------------------------------------------------------------------------------ frozen modules
def test_a_frozen_module_without_a_checkpoint_is_seeded_and_says_so(plan, mesh, capsys):
  kwargs = dict(init_from="", kind="umt5", mesh=mesh, rules=plan.rules, name="text encoder")
  a = encoders.frozen_module(UMT5Encoder, plan.text, seed=3, **kwargs)
  assert "text encoder: seeded random weights (seed 3); set its init_from for real ones" in capsys.readouterr().out
  b = encoders.frozen_module(UMT5Encoder, plan.text, seed=3, **kwargs)
  c = encoders.frozen_module(UMT5Encoder, plan.text, seed=4, **kwargs)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(_leaves(a), _leaves(c)))


def test_a_frozen_module_restores_its_checkpoint_in_the_dtype_asked(plan, mesh, tmp_path, capsys):
  saved = UMT5Encoder(plan.text, rngs=nnx.Rngs(11))
  convert.save_params(saved, str(tmp_path / "umt5"), "umt5")
  capsys.readouterr()
  kwargs = dict(kind="umt5", seed=0, mesh=mesh, rules=plan.rules, name="text encoder")
  with jax.set_mesh(mesh), nnx.logical_axis_rules(plan.rules):
    loaded = encoders.frozen_module(
      UMT5Encoder, plan.text, init_from=str(tmp_path / "umt5"), dtype="bfloat16", **kwargs
    )
  assert "random" not in capsys.readouterr().out
  for want, got in zip(_leaves(saved), _leaves(loaded)):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


# ------------------------------------------------------------------------------ Encoders
def test_pixel_space_encodes_and_decodes_the_video_itself(plan, mesh, capsys):
  tokenizer, enc = encoders.build_encoders(plan, mesh)
  assert "text encoder: seeded random weights (seed 1)" in capsys.readouterr().out  # train.seed + 1
  assert isinstance(tokenizer, input_pipeline.ByteTokenizer) and enc.vae is None and enc.temporal_factor == 1
  video = jax.random.uniform(jax.random.key(0), (2, 5, 16, 16, 3), minval=-1, maxval=1)
  assert enc.encode(video) is video and enc.decode(video) is video
  first = enc.encode_first_frame(video[:, :1], 3)  # frame 0, then 2 blank frames
  assert first.shape == (2, 3, 16, 16, 3) and not first[:, 1:].any()
  np.testing.assert_array_equal(first[:, 0], video[:, 0])
  ids, mask = tokenizer(["a cell divides", "beads"])
  assert enc.text(jnp.asarray(ids), jnp.asarray(mask)).shape == (2, 32, plan.dit.text_dim)


class FakeVAE:
  """The tiny Wan-VAE's factors (2x in time, 4x in space) without its weights: encode keeps frames 0, 2, 4, ...
  and 4 x 4 means; latents are normalised as x * 2 + 1; decode repeats them back (tiled: negated)."""

  cfg = WanVAEConfig.preset("tiny")

  def encode(self, v):
    b, f, h, w, c = v.shape
    return v[:, ::2].reshape(b, 1 + (f - 1) // 2, h // 4, 4, w // 4, 4, c).mean(axis=(3, 5))

  def decode(self, z, tiled=False):
    out = jnp.repeat(jnp.repeat(jnp.repeat(z, 2, axis=1)[:, 1:], 4, axis=2), 4, axis=3)
    return -out if tiled else out

  def normalize_latents(self, z):
    return z * 2 + 1

  def denormalize_latents(self, z):
    return (z - 1) / 2


def test_through_an_autoencoder_latents_are_normalised_and_the_first_frame_padded_with_blanks():
  enc = encoders.Encoders(None, FakeVAE())
  assert enc.temporal_factor == 2
  video = jax.random.uniform(jax.random.key(1), (1, 5, 8, 8, 3), minval=-1, maxval=1)
  latents = enc.encode(video)
  np.testing.assert_allclose(latents, FakeVAE().encode(video) * 2 + 1, rtol=1e-6)
  assert latents.shape == (1, 3, 2, 2, 3)
  first = enc.encode_first_frame(video[:, :1], 3)  # frame 0 then (3 - 1) x 2 blank frames: 5 video frames
  blank = jnp.concatenate([video[:, :1], jnp.zeros((1, 4, 8, 8, 3))], axis=1)
  np.testing.assert_array_equal(first, enc.encode(blank))
  np.testing.assert_allclose(enc.decode(latents), FakeVAE().decode(FakeVAE().encode(video)), atol=1e-6)
  np.testing.assert_allclose(enc.decode(latents, tiled=True), -enc.decode(latents), rtol=1e-6)


def test_a_text_encoder_of_another_width_is_refused_before_loading(plan, mesh):
  other = dataclasses.replace(plan, text=UMT5Config.preset("tiny", d_model=48))
  with pytest.raises(ValueError, match="^model.text_dim=32, but the text encoder gives 48$"):
    encoders.build_encoders(other, mesh)


def test_abstract_encoders_have_the_built_encoders_shapes_and_shardings(plan, mesh):
  _, abstract = encoders.abstract_encoders(plan, mesh)
  _, enc = encoders.build_encoders(plan, mesh)
  want = nnx.state(enc).to_pure_dict()
  got = abstract.to_pure_dict()
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, x in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (x.shape, x.dtype)
    assert a.sharding.is_equivalent_to(x.sharding, x.ndim)
