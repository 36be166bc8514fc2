"""Latent cache: writer/reader round trip with fake encoders, shard-by-shard resume, multi-process."""

from __future__ import annotations

import os
import re
import types

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from microverse_jax import encode, input_pipeline, latent_cache, video

F, H, W, L, D = 9, 16, 24, 40, 8


def fake_video_encoder(v: np.ndarray) -> np.ndarray:
  """(B, F, H, W, 3) -> (B, 1 + (F - 1) / 4, H / 8, W / 8, 4): every 4th frame, 8x8 means, + a ones channel."""
  b, f, h, w, _ = v.shape
  pooled = v[:, ::4].reshape(b, (f - 1) // 4 + 1, h // 8, 8, w // 8, 8, 3).mean(axis=(3, 5))
  return np.concatenate([pooled, np.ones(pooled.shape[:-1] + (1,))], axis=-1)


def fake_text_encoder(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """(B, L) -> (B, L, D): token id / 256 on every channel, garbage (not zero) at padded positions."""
  return np.where(mask[..., None], ids[..., None] / 256.0, 7.0) * np.ones(D)


class CountingEncoder:
  """Wraps the fake video encoder, counting calls; raises after `fail_after` calls (a preemption)."""

  def __init__(self, fail_after: int | None = None):
    self.calls, self.fail_after = 0, fail_after

  def __call__(self, v):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise RuntimeError("preempted")
    self.calls += 1
    return fake_video_encoder(v)


def _encode(source, out_dir, *, split="train", video_encoder=fake_video_encoder, **kwargs):
  defaults = dict(
    dataset="microsim_synth",
    split=split,
    video_encoder=video_encoder,
    text_encoder=fake_text_encoder,
    tokenizer=input_pipeline.ByteTokenizer(L),
    num_frames=F,
    height=H,
    width=W,
    batch_size=2,
    shard_size=4,
    process_index=0,
    process_count=1,
  )
  defaults.update(kwargs)
  return encode.encode_split(source, str(out_dir), **defaults)


@pytest.fixture(scope="module")
def synth_train(synth_data_dir):
  return input_pipeline.load_source("microsim_synth", "train", synth_data_dir)


def test_cache_round_trip(synth_train, synth_data_dir, tmp_path, capsys):
  stats = _encode(synth_train, tmp_path)
  assert stats["shards_written"] == 3 and stats["records"] == len(synth_train) and stats["finalized"]
  progress = [l for l in capsys.readouterr().out.splitlines() if l.startswith("encode train: clips")]
  assert len(progress) >= 3 and f"{len(synth_train)}/{len(synth_train)} (100%)" in progress[-1]
  assert "ETA" in progress[0]
  validation = input_pipeline.load_source("microsim_synth", "validation", synth_data_dir)
  _encode(validation, tmp_path, split="validation")
  for split, source in (("train", synth_train), ("validation", validation)):
    cache = input_pipeline.load_source("microsim_synth_latents", split, str(tmp_path))
    assert len(cache) == len(source)
    assert cache.dataset_info.metadata["text_length"] == L
    for i in range(len(cache)):
      record = cache[i]
      original = source[int(record["source_index"])]
      assert record["id"] == original["id"] and record["caption"] == original["caption"]
      frames = video.to_model_range(video.decode_frames(original["video"], F, height=H, width=W))
      assert record["latents"].dtype == ml_dtypes.bfloat16 and record["latents"].shape == (3, 2, 3, 4)
      np.testing.assert_array_equal(record["latents"], fake_video_encoder(frames[None])[0].astype(ml_dtypes.bfloat16))
      ids, mask = input_pipeline.ByteTokenizer(L)([original["caption"].decode()])
      assert record["context"].shape == (mask.sum(), D)  # only the caption's tokens are stored
      context = fake_text_encoder(ids, mask)[0, : mask.sum()]
      np.testing.assert_array_equal(record["context"], context.astype(ml_dtypes.bfloat16))


def test_latent_iterator(synth_train, tmp_path):
  _encode(synth_train, tmp_path)
  cache = input_pipeline.load_source("microsim_synth_latents", "train", str(tmp_path))
  it = latent_cache.make_iterator(cache, batch_size=3, seed=0, shard_index=0, shard_count=1)
  batch = next(it)
  assert set(batch) == {"latents", "context", "context_mask", "index"}
  assert batch["latents"].shape == (3, 3, 2, 3, 4) and batch["latents"].dtype == np.float32
  assert batch["context"].shape == (3, L, D) and batch["context"].dtype == np.float32
  assert batch["context_mask"].shape == (3, L) and batch["context_mask"].dtype == bool
  for row, index in enumerate(batch["index"]):
    record = cache[int(index)]
    n = record["context"].shape[0]
    assert batch["context_mask"][row].sum() == n
    np.testing.assert_array_equal(batch["context"][row, :n], record["context"].astype(np.float32))
    assert not batch["context"][row, n:].any()  # padded positions zeroed, as the recipe does
    np.testing.assert_array_equal(batch["latents"][row], record["latents"].astype(np.float32))
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(3)]
  again = latent_cache.make_iterator(cache, batch_size=3, seed=0, shard_index=0, shard_count=1)
  again.set_state(state)
  np.testing.assert_array_equal([next(again)["index"] for _ in range(3)], expected)


def test_resume_shard_by_shard(synth_train, tmp_path):
  reference = tmp_path / "reference"
  _encode(synth_train, reference)
  interrupted = tmp_path / "interrupted"
  with pytest.raises(RuntimeError, match="preempted"):
    _encode(synth_train, interrupted, video_encoder=CountingEncoder(fail_after=5))  # 2 batches per shard
  split_dir = interrupted / "microsim_synth_latents" / "1.0.0"
  names = sorted(p.name for p in split_dir.iterdir())
  assert names == ["metadata.json", *(f"microsim_synth_latents-train.array_record-0000{i}-of-00003" for i in range(2))]
  with pytest.raises(ValueError, match="not found"):  # no metadata until every shard exists
    input_pipeline.load_source("microsim_synth_latents", "train", str(interrupted))
  (split_dir / ".microsim_synth_latents-train.array_record-00002-of-00003.x.tmp").write_bytes(b"partial")
  counting = CountingEncoder()
  stats = _encode(synth_train, interrupted, video_encoder=counting)
  assert (stats["shards_skipped"], stats["shards_written"], counting.calls) == (2, 1, 2)  # 3 records left
  for i in range(3):
    name = f"microsim_synth_latents-train.array_record-0000{i}-of-00003"
    assert (split_dir / name).read_bytes() == (reference / "microsim_synth_latents" / "1.0.0" / name).read_bytes()
  assert len(input_pipeline.load_source("microsim_synth_latents", "train", str(interrupted))) == len(synth_train)


def test_processes_write_disjoint_shards(synth_train, tmp_path):
  second = _encode(synth_train, tmp_path, process_index=1, process_count=2)
  assert (second["shards_written"], second["records"], second["finalized"]) == (1, 4, False)
  first = _encode(synth_train, tmp_path, process_index=0, process_count=2)
  assert (first["shards_written"], first["records"], first["finalized"]) == (2, len(synth_train) - 4, True)
  cache = input_pipeline.load_source("microsim_synth_latents", "train", str(tmp_path))
  assert sorted(int(cache[i]["source_index"]) for i in range(len(cache))) == list(range(len(synth_train)))


class PoolingVAE(nnx.Module):
  """A stand-in for WanVAE with its two methods: 2x temporal, 4x spatial pooling, a 1x1 mix, a shift."""

  def __init__(self):
    self.cfg = types.SimpleNamespace(temporal_factor=2, spatial_factor=4)  # what encode.check_size reads
    self.mix = nnx.Param(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    self.mean = nnx.Param(np.full((4,), 0.5, np.float32))

  def encode(self, video):
    b, f, h, w, _ = video.shape
    pooled = video[:, ::2].reshape(b, (f - 1) // 2 + 1, h // 4, 4, w // 4, 4, 3).mean(axis=(3, 5))
    return pooled @ self.mix[...]

  def normalize_latents(self, latents):
    return latents - self.mean[...]


class EmbeddingText(nnx.Module):
  """A stand-in for UMT5Encoder: an embedding table, padded positions zeroed."""

  def __init__(self):
    self.table = nnx.Param(np.random.default_rng(1).normal(size=(259, 8)).astype(np.float32))

  def __call__(self, ids, mask):
    return self.table[...][ids] * mask[..., None]


def test_sharded_encoders_run_nnx_modules(synth_train, tmp_path):
  vae, text = PoolingVAE(), EmbeddingText()
  video_fn, text_fn = encode.sharded_encoders(vae, text)
  clip = np.random.default_rng(0).uniform(-1, 1, (2, 5, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(video_fn(clip), np.asarray(vae.normalize_latents(vae.encode(clip))), atol=1e-5)
  ids, mask = input_pipeline.ByteTokenizer(12)(["a cell divides", "beads diffuse"])
  np.testing.assert_allclose(text_fn(ids, mask), np.asarray(text(ids, mask)), atol=1e-6)
  stats = _encode(
    encode._SourceRange(synth_train, 0, 3),
    tmp_path,
    video_encoder=video_fn,
    text_encoder=text_fn,
    num_frames=5,
    height=16,
    width=16,
  )
  assert stats["records"] == 3 and stats["finalized"]
  cache = input_pipeline.load_source("microsim_synth_latents", "train", str(tmp_path))
  assert cache[0]["latents"].shape == (3, 4, 4, 4) and cache[0]["context"].shape[-1] == 8


_TWO_DEVICES = """
import jax, numpy as np
from test_data_encode import PoolingVAE, EmbeddingText
from microverse_jax import encode
assert len(jax.local_devices()) == 2
video_fn, text_fn = encode.sharded_encoders(PoolingVAE(), EmbeddingText())
clip = np.random.default_rng(0).uniform(-1, 1, (4, 5, 16, 16, 3)).astype(np.float32)
vae = PoolingVAE()
np.testing.assert_allclose(video_fn(clip), np.asarray(vae.normalize_latents(vae.encode(clip))), atol=1e-5)
ids = np.arange(24, dtype=np.int32).reshape(4, 6)
out = text_fn(ids, ids % 3 > 0)
assert out.shape == (4, 6, 8) and not out[ids % 3 == 0].any()
print("ok")
"""


def test_sharded_encoders_split_the_batch_over_devices(run_on_cpu_devices):
  result = run_on_cpu_devices(["-c", _TWO_DEVICES], 2, timeout=300, pythonpath=[os.path.dirname(__file__)])
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.heavy
def test_sharded_encoders_match_the_models(synth_train, tmp_path):
  from microverse_jax.models import umt5, wan_vae

  vae = wan_vae.WanVAE(wan_vae.WanVAEConfig.preset("tiny"), rngs=nnx.Rngs(0))
  text = umt5.UMT5Encoder(umt5.UMT5Config.preset("tiny", vocab_size=259), rngs=nnx.Rngs(1))
  video_fn, text_fn = encode.sharded_encoders(vae, text)
  clip = np.random.default_rng(0).uniform(-1, 1, (2, 5, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(video_fn(clip), np.asarray(vae.normalize_latents(vae.encode(clip))), atol=1e-5)
  ids, mask = input_pipeline.ByteTokenizer(12)(["a cell divides", "beads diffuse"])
  np.testing.assert_allclose(text_fn(ids, mask), np.asarray(text(ids, mask)), atol=1e-5)
  stats = _encode(
    encode._SourceRange(synth_train, 0, 3),
    tmp_path,
    video_encoder=video_fn,
    text_encoder=text_fn,
    num_frames=5,
    height=16,
    width=16,
  )
  assert stats["records"] == 3 and stats["finalized"]
  cache = input_pipeline.load_source("microsim_synth_latents", "train", str(tmp_path))
  assert cache[0]["latents"].shape == (3, 4, 4, 4) and cache[0]["context"].shape[-1] == 32


def test_cli_wiring(synth_data_dir, tmp_path, monkeypatch, capsys):
  from microverse_jax.models import umt5

  loaded = []

  def load_encoder(src, kind, dtype):
    loaded.append((src, kind, dtype))
    return {"vae": PoolingVAE, "umt5": EmbeddingText}[kind]()

  monkeypatch.setattr(encode, "load_encoder", load_encoder)
  monkeypatch.setattr(umt5, "UMT5Tokenizer", lambda path, max_length: input_pipeline.ByteTokenizer(max_length))
  encode.main(
    [
      "--dataset=microsim_synth",
      f"--data_dir={synth_data_dir}",
      "--split=validation",
      f"--out_dir={tmp_path}",
      "--vae=v",
      "--text_encoder=t",
      "--tokenizer=tok",
      "--text_length=24",
      "--num_frames=5",
      "--height=16",
      "--width=16",
      "--batch_size=1",
      "--shard_size=4",
    ]
  )
  assert "'finalized': True" in capsys.readouterr().out
  assert loaded == [("v", "vae", "bfloat16"), ("t", "umt5", "bfloat16")]
  cache = input_pipeline.load_source("microsim_synth_latents", "validation", str(tmp_path))
  assert len(cache) == 1 and cache.dataset_info.metadata["text_length"] == 24
  assert cache[0]["latents"].shape == (3, 4, 4, 4)


def test_load_encoder_takes_either_format(tmp_path, capsys):
  """encode's --vae / --text_encoder: a PyTorch save_pretrained dir or its converted Orbax dir give the
  same weights (as --dtype), each load saying which format it read; a bad path names what was expected."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  transformers = pytest.importorskip("transformers")
  import jax
  from tiny_diffusers import TINY_WAN_VAE  # tests/ is on the path under pytest only

  from microverse_jax import convert

  torch.manual_seed(0)
  diffusers.AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(tmp_path / "vae")
  transformers.UMT5EncoderModel(
    transformers.UMT5Config(
      vocab_size=64,
      d_model=16,
      d_kv=4,
      d_ff=24,
      num_layers=1,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
    )
  ).save_pretrained(tmp_path / "text")
  for kind, src in (("vae", "vae"), ("umt5", "text")):
    convert.save_params(convert.from_checkpoint(str(tmp_path / src), kind), str(tmp_path / f"{kind}_converted"), kind)
  capsys.readouterr()
  for kind, src in (("vae", "vae"), ("umt5", "text")):
    pytorch = encode.load_encoder(str(tmp_path / src), kind, "bfloat16")
    converted = encode.load_encoder(str(tmp_path / f"{kind}_converted"), kind, "bfloat16")
    out = capsys.readouterr().out
    assert (
      f"loaded {kind} weights from PyTorch checkpoint" in out
      and f"loaded {kind} weights from converted Orbax checkpoint" in out
    ), out
    a, b = nnx.state(pytorch, nnx.Param), nnx.state(converted, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(a)} == {np.dtype(ml_dtypes.bfloat16)}
    jax.tree.map(np.testing.assert_array_equal, a, b)
  ids, mask = np.array([[5, 9, 1, 0]], np.int32), np.array([[True, True, True, False]])
  assert np.isfinite(np.asarray(converted(ids, mask), np.float32)).all()
  with pytest.raises(FileNotFoundError, match="no checkpoint in this directory; expected a converted checkpoint"):
    encode.load_encoder(str(tmp_path), "vae")
  with pytest.raises(ValueError, match="kind='dit'"):
    encode.load_encoder(str(tmp_path / "vae"), "dit")


@pytest.mark.hostile
@pytest.mark.parametrize(
  "change,says",
  [
    (dict(num_frames=5), "num_frames 9 (asked: 5)"),
    (dict(height=8, width=8), "height 16 (asked: 8), width 24 (asked: 8)"),
    (dict(tokenizer=input_pipeline.ByteTokenizer(8)), f"text_length {L} (asked: 8)"),
  ],
)
def test_a_rerun_with_other_settings_is_refused_before_writing(synth_train, tmp_path, change, says):
  """Issue 29, item 3: a rerun into the same --out with other frames, size or text length kept the old
  shards beside new ones of another shape, under metadata naming only the new settings."""
  first = _encode(synth_train, tmp_path, shard_size=len(synth_train) // 2 + 1, process_index=0, process_count=2)
  assert not first["finalized"]  # a partial cache: its settings are recorded all the same
  cache = tmp_path / "microsim_synth_latents" / latent_cache.VERSION
  before = sorted(p.name for p in cache.iterdir())
  with pytest.raises(ValueError, match=rf"the latent cache {cache} was encoded with {re.escape(says)}: give another"):
    _encode(synth_train, tmp_path, **change)
  assert sorted(p.name for p in cache.iterdir()) == before
