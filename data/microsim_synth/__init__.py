"""microsim_synth: procedural micro-world clips with physics ground truth (the offline default).

The generator (`render_clip`, `simulate_tracks`, `clip_spec`, `export_prompts`) needs only numpy and
PyAV; the TFDS builder `MicrosimSynth` is imported on first use.
"""

from microverse_jax.datasets.microsim_synth.processes import (
  DEFAULTS,
  PROCESSES,
  ClipSpec,
  caption,
  clip_spec,
  export_prompts,
  render_clip,
  sample_params,
  simulate_tracks,
  split_of,
)

__all__ = [
  "DEFAULTS",
  "PROCESSES",
  "ClipSpec",
  "MicrosimSynth",
  "caption",
  "clip_spec",
  "export_prompts",
  "render_clip",
  "sample_params",
  "simulate_tracks",
  "split_of",
]


def __getattr__(name: str):
  if name == "MicrosimSynth":
    from microverse_jax.datasets.microsim_synth.microsim_synth_dataset_builder import MicrosimSynth  # pylint: disable=g-import-not-at-top

    return MicrosimSynth
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
