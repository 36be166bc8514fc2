"""encode (the CLI): a clip size the VAE cannot take is refused before the cache records its settings."""

import types

import pytest

from microverse_jax import encode
from microverse_jax.models.wan_vae import WanVAEConfig


def test_a_size_the_vae_cannot_take_is_refused_before_the_cache_is_started(tmp_path, monkeypatch):
  """The Wan2.2 VAE (16x spatial, 4x temporal) and 72 rows: one line naming the flags; no cache folder is left
  behind to refuse the corrected rerun ("was encoded with height 72")."""
  loaded = []

  def load_encoder(src, kind, dtype="bfloat16", devices=None):
    loaded.append(kind)
    return types.SimpleNamespace(cfg=WanVAEConfig.preset("tiny-wan2.2"))

  monkeypatch.setattr(encode, "load_encoder", load_encoder)
  out = tmp_path / "cache"
  args = ["--dataset=microsim10k", f"--data_dir={tmp_path}", f"--out={out}", "--vae=VAE", "--text_encoder=T5"]
  args += ["--tokenizer=x", "--num_frames=9", "--height=72", "--width=64"]
  message = "--num_frames/--height/--width=9/72/64: the VAE of --vae=VAE takes 1 + 4k frames and a height and width "
  with pytest.raises(ValueError, match="^" + message.replace("+", r"\+") + "divisible by 16$"):
    encode.main(args)
  assert loaded == ["vae"] and not out.exists()
  with pytest.raises(ValueError, match=r"=8/64/64: the VAE of --vae=VAE takes 1 \+ 4k frames"):
    encode.main([*args[:-3], "--num_frames=8", "--height=64", "--width=64"])
