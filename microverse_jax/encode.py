r"""Builds the latent cache: Wan-VAE latents and text-encoder states for every clip of a TFDS dataset.

  python -m microverse_jax.encode --dataset=microsim10k --data_dir=DIR --split=train --out=DIR \
      --num_frames=81 --height=480 --width=832 --vae=PATH --text_encoder=PATH --tokenizer=DIR

--vae and --text_encoder take either format of the same weights: a converted Orbax dir (written by
`python -m microverse_jax.convert vae|umt5`) or the PyTorch checkpoint (a diffusers / transformers
directory, or the original Wan2.1 .pth); the architecture comes from the checkpoint's own config,
and a line says which format was loaded.

The cache, OUT/<dataset>_latents/1.0.0/, is in latent_cache.py's format (Wan-VAE latents and the
caption's text-encoder states per clip), which `latent_cache.make_iterator` reads back.

Output shard s holds source records [s * shard_size, (s + 1) * shard_size). Process p of P writes
shards s = p (mod P), each batch sharded over its local devices, so every device of every host works
and no host waits on another. A shard is written under a temporary name and renamed when complete:
rerunning the same command skips finished shards (resume after preemption). Process 0 writes the
TFDS metadata once every shard of the split exists (the CLI waits for all hosts first).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from microverse_jax import input_pipeline, latent_cache

VideoEncoder = Callable[[np.ndarray], np.ndarray]  # float32 (B, F, H, W, 3) in [-1, 1] -> (B, F', H', W', C)
TextEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ids int32 (B, L), mask bool (B, L) -> (B, L, D)


@dataclasses.dataclass(frozen=True)
class _SourceRange:
  """Records [start, stop) of a random-access source, as a source of its own."""

  source: object
  start: int
  stop: int

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, i: int):
    return self.source[self.start + i]


def encode_split(
  source,
  out_dir: str,
  *,
  dataset: str,
  split: str,
  video_encoder: VideoEncoder,
  text_encoder: TextEncoder,
  tokenizer: input_pipeline.Tokenizer,
  num_frames: int,
  height: int,
  width: int,
  frame_stride: int = 1,
  batch_size: int = 8,
  shard_size: int = 256,
  worker_count: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> dict:
  """Encodes `source` (a clip source from `load_source`) into OUT_DIR/<dataset>_latents/1.0.0/.

  Returns {"path", "shards_written", "shards_skipped" (already complete), "records", "skipped"
  (clips the pipeline could not load, by reason), "finalized" (metadata written)}.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index, process_count = jax.process_index(), jax.process_count()
  split_dir = latent_cache.cache_dir(out_dir, dataset)
  split_dir.mkdir(parents=True, exist_ok=True)
  settings = latent_cache.encoding_settings(dataset, tokenizer.max_length, num_frames, height, width, frame_stride)
  latent_cache.check_settings(split_dir, settings, write=process_index == 0)
  features = latent_cache.features()
  num_shards = max(1, math.ceil(len(source) / shard_size))
  stats = {
    "path": str(split_dir),
    "shards_written": 0,
    "shards_skipped": 0,
    "records": 0,
    "skipped": dict.fromkeys(input_pipeline.SKIP_REASONS, 0),
    "finalized": False,
  }
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  mine = list(range(process_index, num_shards, process_count))
  total = sum(min(len(source), (s + 1) * shard_size) - s * shard_size for s in mine)
  clock = {"start": time.time(), "shown": time.time(), "done": 0}

  def report(force: bool = False) -> None:  # done/total clips with rate and ETA, every 30 s
    now = time.time()
    if force or now - clock["shown"] >= 30:
      print(cli.progress_line(f"encode {split}: clips", clock["done"], total, now - clock["start"]), flush=True)
      clock["shown"] = now

  for shard in mine:
    path = latent_cache.shard_path(split_dir, split, shard, num_shards)
    if path.exists():
      stats["shards_skipped"] += 1
      clock["done"] += min(len(source), (shard + 1) * shard_size) - shard * shard_size
      continue
    start, stop = shard * shard_size, min(len(source), (shard + 1) * shard_size)
    batches = input_pipeline.make_video_iterator(
      _SourceRange(source, start, stop),
      batch_size=batch_size,
      num_frames=num_frames,
      height=height,
      width=width,
      tokenizer=tokenizer,
      seed=0,
      shuffle=False,
      num_epochs=1,
      worker_count=worker_count,
      frame_stride=frame_stride,
      drop_remainder=False,
      shard_index=0,
      shard_count=1,
    )
    records = []
    for batch in batches:
      latents = np.asarray(video_encoder(batch["video"]))
      context = np.asarray(text_encoder(batch["text_ids"], batch["text_mask"]))
      for row, local_index in enumerate(batch["index"]):
        if local_index < 0:
          continue
        tokens = int(batch["text_mask"][row].sum())
        source_index = start + int(local_index)
        record = source[source_index]
        records.append(
          latent_cache.serialize(
            features, record["id"], record["caption"], latents[row], context[row, :tokens], source_index
          )
        )
      clock["done"] += int((batch["index"] >= 0).sum())
      report()
    for reason, count in batches.skip_counts.items():
      stats["skipped"][reason] += count
      clock["done"] += count
    latent_cache.write_shard(path, records)
    stats["shards_written"] += 1
    stats["records"] += len(records)
    report(force=True)
  if process_index == 0:
    stats["finalized"] = latent_cache.finalize(out_dir, settings)
  return stats


def sharded_encoders(vae, text_encoder, devices=None) -> tuple[VideoEncoder, TextEncoder]:
  """Jit-compiled encoder functions with the batch sharded over `devices` (default: this host's).

  vae: a `WanVAE` (latents are normalised with its per-channel mean/std, as the trainer expects);
  text_encoder: a `UMT5Encoder`. Weights are replicated; the batch must divide by len(devices).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  vae_def, vae_state = nnx.split(vae)
  text_def, text_state = nnx.split(text_encoder)
  vae_state, text_state = jax.device_put((vae_state, text_state), replicated)

  @jax.jit
  def encode_video(state, video):
    model = nnx.merge(vae_def, state)
    return model.normalize_latents(model.encode(jax.lax.with_sharding_constraint(video, batch)))

  @jax.jit
  def encode_text(state, ids, mask):
    return nnx.merge(text_def, state)(
      jax.lax.with_sharding_constraint(ids, batch), jax.lax.with_sharding_constraint(mask, batch)
    )

  def video_fn(video):
    return np.asarray(encode_video(vae_state, jax.device_put(video, batch)))

  def text_fn(ids, mask):
    return np.asarray(encode_text(text_state, jax.device_put(ids, batch), jax.device_put(mask, batch)))

  return video_fn, text_fn


def load_encoder(src: str, kind: str, dtype="bfloat16", devices=None):
  """The Wan-VAE (kind "vae") or umT5 encoder (kind "umt5") of checkpoint `src`, either format: a
  converted Orbax dir (`python -m microverse_jax.convert`) or a PyTorch checkpoint (diffusers /
  transformers directory, original Wan2.1 .pth). The architecture is the checkpoint's own config
  (`convert.checkpoint_config`); floating-point weights are restored as `dtype`, replicated over
  `devices` (default: this host's), without a host copy of the whole model for converted dirs. Loaded
  by `encoders.frozen_module`, as training and sampling load theirs; prints which format it loaded."""
  import jax  # pylint: disable=g-import-not-at-top

  from microverse_jax import convert, encoders  # pylint: disable=g-import-not-at-top
  from microverse_jax.models.umt5 import UMT5Encoder  # pylint: disable=g-import-not-at-top
  from microverse_jax.models.wan_vae import WanVAE  # pylint: disable=g-import-not-at-top

  classes = {"vae": WanVAE, "umt5": UMT5Encoder}
  if kind not in classes:
    raise ValueError(f"kind={kind!r}: expected one of {tuple(classes)}")
  mesh = jax.sharding.Mesh(np.array(list(devices or jax.local_devices())), ("data",))
  return encoders.frozen_module(
    classes[kind],
    convert.checkpoint_config(src, kind),
    init_from=src,
    kind=kind,
    seed=0,
    mesh=mesh,
    rules=(),
    name=kind,
    dtype=dtype,
  )


def check_size(vae_cfg, args) -> None:
  """Refuses a clip size the VAE (`WanVAEConfig`) cannot encode, naming the flags and what it takes."""
  t, s = vae_cfg.temporal_factor, vae_cfg.spatial_factor
  if (args.num_frames - 1) % t or args.height % s or args.width % s:
    raise ValueError(
      f"--num_frames/--height/--width={args.num_frames}/{args.height}/{args.width}: the VAE of --vae={args.vae} "
      f"takes 1 + {t}k frames and a height and width divisible by {s}"
    )


def parser():
  """The command line of `python -m microverse_jax.encode`."""
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  p = cli.argument_parser(__doc__, "python -m microverse_jax.encode")
  p.add_argument("--dataset", required=True, help="source dataset name, e.g. microsim10k")
  p.add_argument("--data_dir", required=True)
  p.add_argument("--split", default="train")
  p.add_argument(
    "--out",
    "--out_dir",
    dest="out_dir",
    required=True,
    metavar="DIR",
    help="cache root (local or gs://); --out_dir: old spelling",
  )
  p.add_argument(
    "--vae", required=True, help="Wan-VAE: a converted dir (convert vae), a diffusers directory or Wan2.1_VAE.pth"
  )
  p.add_argument(
    "--text_encoder",
    required=True,
    help="umT5 encoder: a converted dir (convert umt5), a transformers directory or models_t5_umt5-xxl-enc-bf16.pth",
  )
  p.add_argument("--tokenizer", required=True, help="directory with the umT5 tokenizer.json or spiece.model")
  p.add_argument("--dtype", default="bfloat16", help="encoder weight dtype")
  p.add_argument("--text_length", type=int, default=512)
  p.add_argument("--num_frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--frame_stride", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=8, help="per process; a multiple of local devices")
  p.add_argument("--shard_size", type=int, default=256, help="records per output shard")
  p.add_argument("--worker_count", type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> None:
  args = parser().parse_args(argv)
  from microverse_jax.models.umt5 import UMT5Tokenizer  # pylint: disable=g-import-not-at-top

  settings = latent_cache.encoding_settings(
    args.dataset, args.text_length, args.num_frames, args.height, args.width, args.frame_stride
  )
  # before the encoders load: a mismatch costs nothing
  latent_cache.check_settings(latent_cache.cache_dir(args.out_dir, args.dataset), settings, write=False)
  vae = load_encoder(args.vae, "vae", args.dtype)
  check_size(vae.cfg, args)  # before the cache records its settings
  video_encoder, text_encoder = sharded_encoders(vae, load_encoder(args.text_encoder, "umt5", args.dtype))
  tokenizer = UMT5Tokenizer(args.tokenizer, max_length=args.text_length)
  source = input_pipeline.load_source(args.dataset, args.split, args.data_dir)
  stats = encode_split(
    source,
    args.out_dir,
    dataset=args.dataset,
    split=args.split,
    video_encoder=video_encoder,
    text_encoder=text_encoder,
    tokenizer=tokenizer,
    num_frames=args.num_frames,
    height=args.height,
    width=args.width,
    frame_stride=args.frame_stride,
    batch_size=args.batch_size,
    shard_size=args.shard_size,
    worker_count=args.worker_count,
  )
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:  # the other hosts' shards exist once everyone is here
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices("microverse_jax.encode")
    if jax.process_index() == 0 and not stats["finalized"]:
      stats["finalized"] = latent_cache.finalize(args.out_dir, settings)
  print(stats)


if __name__ == "__main__":
  from microverse_jax import cli  # pylint: disable=g-import-not-at-top

  cli.main_guard(main)
