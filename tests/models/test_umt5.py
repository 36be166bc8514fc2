"""umT5 encoder: parity with transformers UMT5EncoderModel, weight import, tokenizer, sharding."""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from microverse_jax import sharding  # noqa: E402
from microverse_jax.convert import from_checkpoint  # noqa: E402
from microverse_jax.models.umt5 import UMT5Config, UMT5Encoder, UMT5Tokenizer, relative_position_buckets  # noqa: E402

CONFIGS = {  # two tiny configs: few buckets / short max distance, and Wan's 32 buckets / 128
  "small_buckets": dict(
    vocab_size=100,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
  ),
  "wan_buckets": dict(
    vocab_size=120,
    d_model=24,
    d_kv=6,
    d_ff=40,
    num_layers=3,
    num_heads=3,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
  ),
}


def _reference(name, seed=0):
  torch.manual_seed(seed)
  ref = transformers.UMT5EncoderModel(transformers.UMT5Config(**CONFIGS[name])).eval()
  with torch.no_grad():
    for pname, p in ref.named_parameters():
      if "layer_norm" in pname:
        p.add_(0.2 * torch.randn_like(p))
  return ref


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory):
  ref = _reference(request.param)
  path = str(tmp_path_factory.mktemp(f"umt5_{request.param}"))
  ref.save_pretrained(path)
  return ref, path, from_checkpoint(path, "umt5")


def _padded_batch(vocab, length, lengths, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab, size=(len(lengths), length)).astype(np.int32)
  mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  return np.where(mask, ids, 0).astype(np.int32), mask


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state)(ids, mask)


def test_matches_transformers_on_a_padded_batch(converted):
  ref, _, ours = converted
  ids, mask = _padded_batch(ref.config.vocab_size, 40, [40, 5, 23])
  with torch.no_grad():
    expected = ref(
      input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    ).last_hidden_state.numpy()
  out = np.asarray(_run(*nnx.split(ours), ids, mask))
  assert out.shape == (3, 40, ref.config.d_model) and out.dtype == np.float32
  np.testing.assert_allclose(out, expected * mask[..., None], atol=1e-4, rtol=0)
  assert np.all(out[~mask] == 0.0) and np.abs(out[mask]).min() > 0  # padded positions zeroed, others not
  assert np.abs(expected).max() > 0.1


def test_relative_position_buckets_match_transformers():
  attn = _reference("wan_buckets").encoder.block[0].layer[0].SelfAttention
  length = 512
  rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  expected = attn._relative_position_bucket(rel).numpy()
  ours = relative_position_buckets(length, 32, 128)
  np.testing.assert_array_equal(ours, expected)
  assert ours.min() == 0 and ours.max() == 31


# Original Wan `T5Encoder` names, written independently of the converter (test-only rename).
_ORIGINAL = {
  "layer.0.layer_norm": "norm1",
  "layer.0.SelfAttention.q": "attn.q",
  "layer.0.SelfAttention.k": "attn.k",
  "layer.0.SelfAttention.v": "attn.v",
  "layer.0.SelfAttention.o": "attn.o",
  "layer.1.layer_norm": "norm2",
  "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
  "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
  "layer.1.DenseReluDense.wi_1": "ffn.fc1",
  "layer.1.DenseReluDense.wo": "ffn.fc2",
}


def _original_state_dict(ref):
  out = {
    "token_embedding.weight": ref.shared.weight.detach().clone(),
    "norm.weight": ref.encoder.final_layer_norm.weight.detach().clone(),
  }
  for key, value in ref.state_dict().items():
    if key.startswith("encoder.block."):
      _, _, i, rest = key.split(".", 3)
      module = rest.removesuffix(".weight")
      out[f"blocks.{i}.{_ORIGINAL[module]}.weight"] = value.clone()
  return out


def test_original_pth_loads_identically(converted, tmp_path):
  ref, _, ours = converted
  path = str(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
  torch.save(_original_state_dict(ref), path)
  original = from_checkpoint(path, "umt5", max_distance=ref.config.relative_attention_max_distance)
  assert original.cfg == ours.cfg
  a, b = (nnx.state(m, nnx.Param).to_pure_dict() for m in (ours, original))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_mismatched_checkpoints_give_clear_errors(tmp_path):
  ref = _reference("small_buckets")
  src = tmp_path / "ok"
  ref.save_pretrained(str(src))
  config = json.loads((src / "config.json").read_text())
  for name, change, message in (
    ("layers", {"num_layers": 3}, r"missing key 'encoder\.block\.2\."),
    ("width", {"d_ff": 64}, r"blocks\.wi_0\.kernel: checkpoint \(2, 32, 48\), model \(2, 32, 64\)"),
    ("t5", {"model_type": "t5"}, r"model_type='t5'"),
  ):
    bad = tmp_path / name
    bad.mkdir()
    os.symlink(src / "model.safetensors", bad / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
      from_checkpoint(str(bad), "umt5")
  model = nnx.eval_shape(lambda: UMT5Encoder(UMT5Config.preset("tiny"), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"one shape \(B, L\), got \(2, 4\), \(2, 5\)"):
    model(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 5), bool))


def test_presets():
  xxl = UMT5Config.preset("umt5-xxl")
  assert (xxl.vocab_size, xxl.d_model, xxl.d_ff, xxl.num_layers, xxl.num_heads, xxl.d_kv) == (
    256384,
    4096,
    10240,
    24,
    64,
    64,
  )
  assert (xxl.num_buckets, xxl.max_distance, xxl.max_length) == (32, 128, 512)
  with pytest.raises(ValueError, match="unknown UMT5 preset"):
    UMT5Config.preset("t5-base")


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------
def _per_device_bytes(model, mesh_shape):
  total = per_device = 0
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    spec = sharding.logical_to_spec(var.get_metadata()["out_sharding"])
    shard = list(var.shape)
    for dim, axes in enumerate(spec):
      for axis in [] if axes is None else [axes] if isinstance(axes, str) else axes:
        assert shard[dim] % mesh_shape[axis] == 0, (var.shape, spec)
        shard[dim] //= mesh_shape[axis]
    total += math.prod(var.shape) * 4
    per_device += math.prod(shard) * 4
  return total, per_device


def test_xxl_parameters_shard_over_fsdp_and_tensor():
  xxl = nnx.eval_shape(lambda: UMT5Encoder(UMT5Config.preset("umt5-xxl"), rngs=nnx.Rngs(0)))
  n = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(xxl, nnx.Param)))
  assert 5.6e9 < n < 5.8e9
  total, per_device = _per_device_bytes(xxl, {"data": 1, "fsdp": 4, "tensor": 2, "context": 1})
  assert per_device < 1.01 * total / 8  # every large tensor is split 8 ways (23 GB -> 2.9 GB)


def test_xxl_compiles_for_v5p_within_a_quarter_of_its_memory_per_chip():
  """Ahead-of-time compile (libtpu, no TPU needed) of umt5-xxl, bf16 compute, on v5p 2x2x1 (4 chips,
  fsdp=2 x tensor=2), batch 4 x 512 tokens: each chip holds a quarter of the fp32 parameters."""
  topologies = pytest.importorskip("jax.experimental.topologies")
  try:
    topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1")
  except Exception as e:  # libtpu missing
    pytest.skip(f"no TPU compiler: {e}")
  from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

  mesh = Mesh(np.array(topo.devices).reshape(1, 2, 2, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(UMT5Config.preset("umt5-xxl", dtype="bfloat16"), rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  state = jax.tree.map(
    lambda v: jax.ShapeDtypeStruct(
      v.shape, v.dtype, sharding=NamedSharding(mesh, sharding.logical_to_spec(v.get_metadata()["out_sharding"]))
    ),
    state,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  tokens = NamedSharding(mesh, P(("data", "fsdp")))
  ids = jax.ShapeDtypeStruct((4, 512), jnp.int32, sharding=tokens)
  mask = jax.ShapeDtypeStruct((4, 512), jnp.bool_, sharding=tokens)
  with jax.set_mesh(mesh):
    compiled = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m)).lower(state, ids, mask).compile()
  memory = compiled.memory_analysis()
  total = sum(math.prod(v.shape) * 4 for v in jax.tree.leaves(state))
  print(
    f"umt5-xxl on v5p 2x2x1: params {total / 2**30:.2f} GiB in total; per chip: arguments "
    f"{memory.argument_size_in_bytes / 2**30:.2f} GiB, temp {memory.temp_size_in_bytes / 2**30:.2f} GiB"
  )
  assert memory.argument_size_in_bytes < 0.26 * total


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from microverse_jax import sharding
    from microverse_jax.models.umt5 import UMT5Config, UMT5Encoder
    # Random weights without eager initialisers (op-by-op init compiles every shape: slow on CPU).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UMT5Encoder(UMT5Config.preset("tiny"), rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1 + 1 if len(s.shape) == 1 else
                                               rng.normal(size=s.shape) / s.shape[-2] ** 0.5, jnp.float32), state)
    model = nnx.merge(graphdef, state)
    ids = jnp.asarray(np.random.default_rng(0).integers(2, 128, (2, 16)), jnp.int32)
    mask = jnp.arange(16)[None] < jnp.asarray([[16], [7]])
    graphdef, state = nnx.split(model)
    run = lambda s, i, m: nnx.merge(graphdef, s)(i, m)
    expected = jax.jit(run)(state, ids, mask)
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2})
    specs = jax.tree.map(lambda v: NamedSharding(mesh, sharding.logical_to_spec(v.get_metadata()["out_sharding"])),
                         state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    state = jax.device_put(state, specs)
    kernel = state["blocks"]["wi_0"]["kernel"][...]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor"), kernel.sharding.spec
    assert kernel.addressable_shards[0].data.shape == (2, 16, 24)
    with jax.set_mesh(mesh):
      out = jax.jit(run)(state, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
    print("OK")
""")


def test_tiny_encoder_runs_with_sharded_parameters(run_on_cpu_devices):
  result = run_on_cpu_devices(["-c", _SHARDED], 4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def _write_tokenizer_json(directory):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate("a b c d & cell".split())}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  tok.save(os.path.join(directory, "tokenizer.json"))


def test_tokenizer_json_pads_truncates_and_pickles(tmp_path):
  _write_tokenizer_json(str(tmp_path))
  tok = UMT5Tokenizer(str(tmp_path), max_length=6)
  ids, mask = tok(["a  b\n c", "cell &amp; a b c d a b", ""])
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (3, 6)
  np.testing.assert_array_equal(ids[0], [3, 4, 5, 1, 0, 0])  # whitespace collapsed, </s>, pad
  np.testing.assert_array_equal(ids[1], [8, 7, 3, 4, 5, 1])  # &amp; unescaped; truncated, </s> kept
  np.testing.assert_array_equal(mask.sum(1), [4, 6, 1])
  again = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(again(["a  b\n c"])[0], ids[:1])


def test_sentencepiece_model_works_too(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(
    "\n".join(["a red blood cell squeezes through a capillary", "a cell divides in two", "a virus enters a cell"] * 20)
  )
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / "spiece"),
    vocab_size=28,
    hard_vocab_limit=False,
    minloglevel=2,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    model_type="unigram",
  )
  tok = pickle.loads(pickle.dumps(UMT5Tokenizer(str(tmp_path), max_length=8)))
  ids, mask = tok(["a cell", "a red blood cell squeezes through a capillary"])
  assert ids.shape == (2, 8)
  assert ids[0, mask[0].sum() - 1] == 1 and np.all(ids[0, mask[0].sum() :] == 0)
  assert mask[1].all() and ids[1, -1] == 1


def test_missing_tokenizer_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no umT5 tokenizer in .*tokenizer\.json or spiece\.model"):
    UMT5Tokenizer(str(tmp_path))


def test_cli_converts_and_round_trips(converted, tmp_path):
  from microverse_jax import convert

  _, src, ours = converted
  convert.main(["umt5", "--src", src, "--dst", str(tmp_path / "out")])
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["kind"] == "umt5" and config["config"]["num_layers"] == ours.cfg.num_layers
  graphdef, state = nnx.split(nnx.eval_shape(lambda: UMT5Encoder(ours.cfg, rngs=nnx.Rngs(1))))
  fresh = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))
  convert.load_params(str(tmp_path / "out"), fresh)
  a, b = (nnx.state(m, nnx.Param).to_pure_dict() for m in (ours, fresh))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
