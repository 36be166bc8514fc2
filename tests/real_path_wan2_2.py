"""The real Wan2.2 path as docs/wan2_2.md shows it: TI2V-5B (convert, build, encode, LoRA with image conditioning,
text- and image-to-video sampling, export) and one T2V-A14B expert (convert, encode, train, export beside its
partner, sample both). The table real_path_chain.Chain runs (`table=`): COMMANDS with the user's paths as shell
variables and sizes as {frames}/{height}/{width} (TI2V-5B) and {a14b_frames}/... (A14B), REAL and TINY sizes,
TINY_EXTRA flags appended by the tests, NEEDS.
"""

from __future__ import annotations

import real_path_chain as rp

REAL = dict(frames=121, height=704, width=1280, a14b_frames=81, a14b_height=480, a14b_width=832)
TINY = dict(frames=9, height=64, width=64, a14b_frames=9, a14b_height=32, a14b_width=32)
PROMPT = "A red blood cell divides into two slowly."

# Paths a user sets (the docs' first block). $IMAGE: a first frame; $PROMPTS: a prompts JSONL with first_frame.
VARIABLES = ("WAN22", "A14B", "CKPT", "MANUAL", "DATA", "CACHE", "CACHE_A14B", "RUNS", "OUT", "BENCH")
VARIABLES += ("IMAGE", "PROMPTS")

_RUBRICS = "--rubrics=$BENCH/MWBenchRubrics.json"
_ENCODE = (
  "python -m microverse_jax.encode --dataset=microsim10k --data_dir=$DATA --split=train --out={out} "
  "--num_frames={{{p}frames}} --height={{{p}height}} --width={{{p}width}} --vae={vae} --text_encoder=$CKPT/umt5 "
  "--tokenizer={tok}"
)
_TRAIN = (
  "python -m microverse_jax.train --config=configs/wan2_2.py:{variant} --workdir=$RUNS/{run} "
  "--config.init_from=$CKPT/{dit} --config.autoencoder.init_from={vae} --config.text.init_from=$CKPT/umt5 "
  "--config.text.tokenizer={tok}"
)
_LATENTS = " --config.data.name=microsim10k_latents --config.data.source=latents --config.data.data_dir={cache}"
_VIDEO = " --config.data.name=microsim10k --config.data.source=video --config.data.data_dir=$DATA"
_TI2V = dict(dit="ti2v_5b", vae="$CKPT/vae2.2", tok="$WAN22/tokenizer")
_A14B = dict(dit="a14b_low", vae="$A14B/vae", tok="$A14B/tokenizer")
_SAMPLE = "python -m microverse_jax.sample --workdir=$RUNS/{run} "

COMMANDS = {
  # TI2V-5B
  "convert_dit": "python -m microverse_jax.convert dit --src=$WAN22/transformer --out=$CKPT/ti2v_5b",
  "convert_vae": "python -m microverse_jax.convert vae --src=$WAN22/vae --out=$CKPT/vae2.2",
  "convert_umt5": "python -m microverse_jax.convert umt5 --src=$WAN22/text_encoder --out=$CKPT/umt5",
  "build": rp.COMMANDS["build"],
  "encode": _ENCODE.format(out="$CACHE", p="", vae="$CKPT/vae2.2", tok="$WAN22/tokenizer"),
  "train_lora": _TRAIN.format(variant="ti2v_5b,lora", run="ti2v_lora", **_TI2V) + _LATENTS.format(cache="$CACHE"),
  "train_full_video": _TRAIN.format(variant="ti2v_5b,full", run="ti2v_full", **_TI2V) + _VIDEO,
  "sample_t2v": _SAMPLE.format(run="ti2v_lora") + f"{_RUBRICS} --out=$OUT/ti2v_lora",
  "sample_image": _SAMPLE.format(run="ti2v_lora") + f'--image=$IMAGE --prompt="{PROMPT}" --out=$OUT/ti2v_image.mp4',
  "sample_prompts": _SAMPLE.format(run="ti2v_lora") + "--prompts=$PROMPTS --out=$OUT/ti2v_prompts",
  "sample_full_video": _SAMPLE.format(run="ti2v_full") + f"{_RUBRICS} --out=$OUT/ti2v_full",
  "export": (
    "python -m microverse_jax.export --workdir=$RUNS/ti2v_lora --format=diffusers --out=$OUT/ti2v_lora_diffusers"
  ),
  # T2V-A14B: the Wan2.1 VAE, the same umT5
  "convert_high": "python -m microverse_jax.convert dit --src=$A14B/transformer --out=$CKPT/a14b_high",
  "convert_low": "python -m microverse_jax.convert dit --src=$A14B/transformer_2 --out=$CKPT/a14b_low",
  "encode_a14b": _ENCODE.format(out="$CACHE_A14B", p="a14b_", vae="$A14B/vae", tok="$A14B/tokenizer"),
  "train_a14b": _TRAIN.format(variant="t2v_a14b,lora,expert=low", run="a14b_low", **_A14B)
  + _LATENTS.format(cache="$CACHE_A14B"),
  "copy_a14b": "cp -rs $A14B $OUT/a14b_low",
  "export_a14b": "python -m microverse_jax.export --workdir=$RUNS/a14b_low --format=diffusers --out=$OUT/a14b_low",
  "sample_a14b": (
    "python -m microverse_jax.sample --checkpoint=$OUT/a14b_low --config=configs/wan2_2.py:t2v_a14b "
    f"{_RUBRICS} --out=$OUT/a14b_low_videos "
    "--num_frames={a14b_frames} --height={a14b_height} --width={a14b_width}"
  ),
}

INDICES = "1-2"
_TINY_TRAIN = [
  "--config.data.batch_size=2",
  "--config.data.worker_count=0",
  "--config.train.num_steps={steps}",
]
_SIZE = ["--config.data.num_frames={frames}", "--config.data.height={height}", "--config.data.width={width}"]
_A14B_SIZE = [s.replace("{", "{a14b_") for s in _SIZE]
_TINY_SAMPLE = ["--steps=2", "--batch_size=2"]
TINY_EXTRA = {
  "encode": ["--batch_size=2"],
  "encode_a14b": ["--batch_size=2"],
  "train_lora": _SIZE + _TINY_TRAIN,
  "train_full_video": _SIZE + _TINY_TRAIN,
  "train_a14b": _A14B_SIZE + _TINY_TRAIN,
  "sample_t2v": [f"--indices={INDICES}", *_TINY_SAMPLE],
  "sample_full_video": [f"--indices={INDICES}", *_TINY_SAMPLE],
  "sample_image": ["--steps=2"],
  "sample_prompts": _TINY_SAMPLE,
  "sample_a14b": [f"--indices={INDICES}", "--steps=4", "--batch_size=2"],  # 4 steps: both experts run
}
_CONVERTED = ["convert_dit", "convert_vae", "convert_umt5"]
NEEDS = {
  "encode": ["build", "convert_vae", "convert_umt5"],
  "train_lora": [*_CONVERTED, "encode"],
  "train_full_video": [*_CONVERTED, "build"],
  "sample_t2v": ["train_lora"],
  "sample_image": ["train_lora"],
  "sample_prompts": ["train_lora"],
  "sample_full_video": ["train_full_video"],
  "export": ["train_lora"],
  "encode_a14b": ["build", "convert_umt5"],
  "train_a14b": ["convert_low", "convert_umt5", "encode_a14b"],
  "copy_a14b": ["train_a14b"],
  "export_a14b": ["copy_a14b"],
  "sample_a14b": ["export_a14b"],
}


def shown(name: str) -> str:
  """The command as docs/wan2_2.md prints it (real sizes)."""
  return COMMANDS[name].format(**REAL)
