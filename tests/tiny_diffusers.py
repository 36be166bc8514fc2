"""The tiny random diffusers WanTransformer3DModel the parity tests share (its constructor kwargs)."""

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
