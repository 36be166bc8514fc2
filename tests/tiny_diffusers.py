"""Tiny random diffusers models the tests share (constructor kwargs): a Wan DiT and a Wan-VAE."""

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
