"""Tiny random models the tests share: a Wan DiT and a Wan-VAE (diffusers kwargs), a umT5 and its tokenizer."""

TINY_WAN_DIT = dict(
  patch_size=(1, 2, 2),
  num_attention_heads=2,
  attention_head_dim=16,
  in_channels=4,
  out_channels=4,
  text_dim=32,
  freq_dim=32,
  ffn_dim=64,
  num_layers=2,
  rope_max_seq_len=32,
)

TINY_WAN_VAE = dict(
  base_dim=8,
  z_dim=4,
  dim_mult=[1, 2, 2],
  num_res_blocks=1,
  attn_scales=[],
  temperal_downsample=[False, True],
  latents_mean=[0.0] * 4,
  latents_std=[1.0] * 4,
)

WORDS = "a red cell divides in two virus enters blurry static".split()  # the tiny tokenizer's vocabulary


# The Wan2.2 VAE's structure at a CPU size (WanVAEConfig "tiny-wan2.2"): a 2x2 patchify, then 8x spatial;
# 16x spatial and 4x temporal in all.
TINY_WAN22_VAE = dict(
  base_dim=4,
  decoder_base_dim=6,
  z_dim=4,
  dim_mult=[1, 2, 4, 4],
  num_res_blocks=1,
  attn_scales=[],
  temperal_downsample=[False, True, True],
  is_residual=True,
  in_channels=12,
  out_channels=12,
  patch_size=2,
  scale_factor_spatial=16,
  scale_factor_temporal=4,
)


def tiny_umt5():
  """A tiny random transformers UMT5EncoderModel (d_model 32, the tiny DiT's text_dim), in eval mode."""
  import transformers  # pylint: disable=g-import-not-at-top

  config = transformers.UMT5Config(
    vocab_size=32,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
  )
  return transformers.UMT5EncoderModel(config).eval()


def word_tokenizer():
  """A word-level `tokenizers.Tokenizer` over WORDS that appends </s>, as umT5's does (pad 0, eos 1, unk 2)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return tok


def tiny_tokenizer():
  """word_tokenizer() as a transformers fast tokenizer (what diffusers pipelines take)."""
  import transformers  # pylint: disable=g-import-not-at-top

  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=word_tokenizer(), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )
