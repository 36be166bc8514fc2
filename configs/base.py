"""Every key a run's config has, once, with its default and what it means: recipes override it.

  c = base.get_config(); c.model.update(...)   (configs/microsim_tiny.py, configs/wan2_1.py)

The defaults are Wan2.1 T2V-1.3B on the MicroSim-10K latent cache, fine-tuned in full. Code never asks
whether a key exists: a saved config.json of an older run is read merged onto this one (saved_config.py).
"""

import ml_collections

# The official negative prompt, exactly as MicroVerse's train/inference.py (DEFAULT_NEGATIVE_PROMPT) has it.
NEGATIVE_PROMPT = (
  "Overexposed, static, blurry details, subtitles, watermark, worst quality, low quality, "
  "JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, poorly drawn face, "
  "mutated, fused fingers, frozen frame, cluttered background"
)


def variants(arg: str, allowed: set[str], config_file: str) -> set[str]:
  """The comma list `arg` of a recipe's get_config as a set (lower case); a word not in `allowed` is an error
  naming the file and every allowed word."""
  words = {v.strip().lower() for v in arg.split(",") if v.strip()}
  if unknown := words - allowed:
    raise ValueError(f"{config_file}: unknown variants {sorted(unknown)}; expected {sorted(allowed)}")
  return words


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.init_from = ""  # a DiT checkpoint (python -m microverse_jax.convert dit); its own architecture wins

  # The DiT: models/wan_dit.WanDiTConfig, field for field. With init_from, the checkpoint's own architecture
  # replaces the fields down to cross_attn_norm; the rest say how to run it.
  c.model = ml_collections.ConfigDict()
  c.model.patch_size = (1, 2, 2)  # (frames, height, width) of latent per token
  c.model.num_heads = 12  # attention heads; the width is num_heads x head_dim
  c.model.head_dim = 128  # width per head
  c.model.in_channels = 16  # latent channels in (the autoencoder's, with diffusion.image_conditioning's extras)
  c.model.out_channels = 16  # latent channels out (predicted)
  c.model.text_dim = 4096  # the text encoder's width
  c.model.freq_dim = 256  # sinusoidal timestep embedding width
  c.model.ffn_dim = 8960  # feed-forward hidden width
  c.model.num_layers = 30  # transformer blocks
  c.model.eps = 1e-6  # norm epsilon
  c.model.rope_max_seq_len = 1024  # 3-D RoPE table length per axis
  c.model.qk_norm = "rms_norm_across_heads"  # query/key norm
  c.model.cross_attn_norm = True  # norm before cross-attention
  c.model.dtype = "bfloat16"  # compute dtype; parameters stay in optim.param_dtype
  c.model.attention_impl = "auto"  # kernels/attention/api.py: auto, xla, cudnn, pallas_tpu, pallas_gpu, splash
  c.model.remat_policy = "nothing_saveable"  # one of models/wan_dit.py REMAT_POLICIES (docs/training.md)
  c.model.lora_rank = 0  # 0: full fine-tuning; > 0: LoRA of that rank on model.lora_targets
  c.model.lora_alpha = 32.0  # LoRA scale alpha / rank
  c.model.lora_targets = ("q", "k", "v", "o", "ffn_in", "ffn_out")  # the projections LoRA adapts

  c.autoencoder = ml_collections.ConfigDict()
  c.autoencoder.kind = "wan_vae"  # "wan_vae", or "pixel" (identity: the DiT sees RGB)
  c.autoencoder.preset = "wan2.1"  # WanVAEConfig.preset name, without init_from (random weights)
  c.autoencoder.init_from = ""  # a converted Wan-VAE checkpoint

  c.text = ml_collections.ConfigDict()
  c.text.preset = "umt5-xxl"  # UMT5Config.preset name, without init_from (random weights)
  c.text.tokenizer = ""  # a tokenizer folder; "bytes" / "microsim_params" need no files (factory.OFFLINE_TOKENIZERS)
  c.text.max_length = 512  # caption tokens
  c.text.init_from = ""  # a converted umT5 checkpoint

  c.data = ml_collections.ConfigDict()
  c.data.name = "microsim10k_latents"  # a TFDS name: microsim10k, microsim10k_latents, microsim_synth
  c.data.data_dir = "~/tensorflow_datasets"  # local or gs://
  c.data.source = "latents"  # "latents" (the encode cache) or "video" (encoded on the fly)
  c.data.batch_size = 8  # global clips per step
  c.data.num_frames = 81  # frames per clip (4k + 1 for the Wan-VAE)
  c.data.height = 480  # pixels (divisible by the autoencoder's stride x patch)
  c.data.width = 832  # pixels
  c.data.frame_stride = 1  # take every n-th frame
  c.data.worker_count = 4  # Grain worker processes (0: in the main process)
  c.data.frame_buckets = ()  # () = every 4k + 1 from 5 to num_frames: short clips keep their largest 4k + 1
  c.data.dataset_repeat = 1  # passes over the train split per epoch (train.num_epochs)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-5  # the peak rate at optim.reference_batch
  c.optim.lr_scaling = "none"  # from reference_batch to data.batch_size: "none", "linear", "sqrt" (Adam)
  c.optim.reference_batch = 1  # the batch optim.lr was tuned at (read with lr_scaling "linear" / "sqrt")
  c.optim.param_dtype = "float32"  # trained weights and AdamW moments: float32 master weights, or bfloat16
  c.optim.warmup_steps = 0  # linear warm-up from 0
  c.optim.schedule = "constant"  # after warm-up: "constant" or "cosine" (to 0 at train.num_steps)
  c.optim.weight_decay = 0.01  # AdamW's, decoupled
  c.optim.b1 = 0.9  # AdamW first-moment decay
  c.optim.b2 = 0.999  # AdamW second-moment decay
  c.optim.eps = 1e-8  # AdamW epsilon
  c.optim.grad_clip = 0.0  # global-norm clip; 0: off
  c.optim.grad_accum = 1  # micro-batches per step (data.batch_size splits into them)
  c.optim.ema_decay = 0.0  # EMA of the trained weights, sampled when kept; 0: none

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.shift = 5.0  # flow-matching timestep shift (Wan2.1 480p: 5)
  c.diffusion.prediction = "velocity"  # what the DiT outputs: "velocity" or "x0" (diffusion.PREDICTIONS)
  c.diffusion.weighting = "wan"  # loss weight over noise levels: diffusion.WEIGHTINGS ("wan": Wan's recipe)
  c.diffusion.sigma_sampling = "uniform"  # how training draws noise levels: "uniform" or "logit_normal" (SD3)
  c.diffusion.image_conditioning = "none"  # first frame: "none" (text-to-video), "ti2v", "concat" (docs/sampling.md)
  c.diffusion.boundary_ratio = 0.0  # Wan2.2 A14B: experts switch at timestep 1000 x this; 0: one model

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 0  # 0: num_epochs x ceil(train clips x data.dataset_repeat / data.batch_size)
  c.train.num_epochs = 1  # read when num_steps is 0
  c.train.log_every = 10  # steps between metrics lines
  c.train.checkpoint_every = 500  # steps between Orbax checkpoints (and at the end, and on SIGTERM)
  c.train.keep_checkpoints = 3  # the newest N kept
  c.train.seed = 0  # init, noise, timesteps, data order
  c.train.profile_start = -1  # a step to start a profiler trace at (WORKDIR/profile); -1: none
  c.train.profile_steps = 3  # steps traced
  c.train.caption_dropout = 0.0  # rate of empty captions (for classifier-free guidance); data.source "video"
  c.train.expert = ""  # "": every timestep; "high" / "low": the expert >= / < 1000 diffusion.boundary_ratio
  c.train.text_only_rate = 0.0  # "ti2v": the fraction of examples trained text to video (no first frame)
  c.train.on_nonfinite = "stop"  # a NaN/inf update: "stop" (nothing saved) or "skip" it

  # Sampling: the run's defaults for `sample`, the Pipeline and the sampling evaluators.
  c.sample = ml_collections.ConfigDict()
  c.sample.steps = 50  # sampler steps
  c.sample.guidance = 5.0  # classifier-free guidance scale
  c.sample.guidance_2 = 0.0  # two experts (Wan2.2 A14B folder): the low-noise transformer_2's scale; 0: sample.guidance
  c.sample.negative_prompt = NEGATIVE_PROMPT  # the unconditional text of CFG
  c.sample.sampler = "euler"  # "euler" or "unipc"
  c.sample.fps = 15  # of the mp4
  c.sample.step_cache = 0.0  # reuse the last velocity under this relative L1 change; 0: off (docs/sampling.md)
  c.sample.cfg_cache = False  # the unconditional pass every other step only (docs/sampling.md)
  c.sample.same_noise = False  # every prompt the noise of the seed's first draw, as the official inference.py
  c.sample.tiled_decode = True  # decode the Wan-VAE in overlapping tiles (less memory; pixel space: no effect)

  # Evaluators by name (microverse_jax/evaluators/<kind>.py); every = 0 turns one off.
  c.evals = ml_collections.ConfigDict()
  c.evals.loss = dict(kind="loss", every=1000, num_batches=4, buckets=(100, 300, 500, 700, 900))  # held-out loss
  c.evals.samples = dict(kind="samples", every=0, prompts=())  # videos of the prompts to WORKDIR/samples/
  c.evals.physics = dict(kind="physics", every=0, num_clips=16)  # physics scores, microsim_synth only

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))  # -1: the devices left
  c.sharding_rules = ml_collections.ConfigDict()  # logical axis -> mesh axes overrides (sharding.py)
  return c
