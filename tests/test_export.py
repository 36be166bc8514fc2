"""Export to the PyTorch ecosystem: diffusers on the exported weights gives our model's velocity."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' LoRA loading runs on PEFT

from tiny_diffusers import TINY_WAN_DIT  # noqa: E402

from microverse_jax import convert, export  # noqa: E402

TINY = TINY_WAN_DIT


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
  """(diffusers base dir, our WanDiT with rank-4 LoRA on every target, B nonzero, alpha/rank = 2)."""
  torch.manual_seed(0)
  base = diffusers.WanTransformer3DModel(**TINY).eval()
  with torch.no_grad():
    for p in base.parameters():
      p.add_(0.02 * torch.randn_like(p))
  path = str(tmp_path_factory.mktemp("base"))
  base.save_pretrained(path)
  model = convert.from_checkpoint(path, "dit", lora_rank=4, lora_alpha=8.0)
  state = nnx.state(model, nnx.LoRAParam)
  keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
  nnx.update(model, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), state))
  return path, model


def _velocities(model, torch_model):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 8, 12, 4), dtype=np.float32)
  t = np.array([3.0, 871.5], np.float32)
  ctx = rng.standard_normal((2, 7, 32), dtype=np.float32)
  ours = np.asarray(model(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(ctx)).sample
  return ours, ref.permute(0, 2, 3, 4, 1).numpy()


def test_lora_changes_the_velocity(lora_model):
  path, model = lora_model
  ours, base = _velocities(model, diffusers.WanTransformer3DModel.from_pretrained(path).eval())
  assert np.abs(ours - base).max() > 1e-2  # the delta matters, so the parity below means something


def test_full_dit_exports_as_a_diffusers_model(lora_model, tmp_path):
  _, model = lora_model
  out = export.export_diffusers(model, str(tmp_path / "transformer"), max_shard_bytes=100_000)
  assert {"config.json", "artifact.json"} <= set(os.listdir(out))  # and says it is a diffusers model folder
  assert os.path.exists(os.path.join(out, "diffusion_pytorch_model.safetensors.index.json"))  # sharded
  ours, ref = _velocities(model, diffusers.WanTransformer3DModel.from_pretrained(out).eval())
  assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()
  again = convert.from_checkpoint(out, "dit")  # and it reads back through our loader
  ours_again, _ = _velocities(again, diffusers.WanTransformer3DModel.from_pretrained(out).eval())
  assert np.abs(ours_again - ours).max() <= 1e-5


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_lora_exports_for_diffusers_load_lora_weights(lora_model, tmp_path, layout):
  path, model = lora_model
  lora_file = export.export_lora(model, str(tmp_path / "lora.safetensors"), layout=layout)
  transformer = diffusers.WanTransformer3DModel.from_pretrained(path).eval()
  pipe = diffusers.WanPipeline(
    tokenizer=None,
    text_encoder=None,
    vae=None,
    transformer=transformer,
    scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
  )
  pipe.load_lora_weights(lora_file)
  ours, ref = _velocities(model, pipe.transformer)
  assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


def test_diffsynth_layout_round_trips_through_our_importer(lora_model, tmp_path):
  path, model = lora_model
  lora_file = export.export_lora(model, str(tmp_path / "step-7.safetensors"), layout="diffsynth")
  from safetensors.numpy import load_file

  assert "blocks.0.self_attn.q.lora_A.default.weight" in load_file(lora_file)
  fresh = convert.from_checkpoint(path, "dit", lora_rank=4, lora_alpha=4.0)  # another alpha: rescaled
  convert.load_lora(str(tmp_path), fresh)
  a, _ = _velocities(model, diffusers.WanTransformer3DModel.from_pretrained(path).eval())
  b, _ = _velocities(fresh, diffusers.WanTransformer3DModel.from_pretrained(path).eval())
  assert np.abs(a - b).max() <= 1e-5
