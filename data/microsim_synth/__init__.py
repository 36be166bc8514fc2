"""microsim_synth: procedural micro-world clips with physics ground truth (the offline default)."""

from data.microsim_synth.processes import (PROCESSES, ClipSpec, caption, clip_spec, render_clip,
                                           sample_params, simulate_tracks)
from data.microsim_synth.microsim_synth_dataset_builder import MicrosimSynth, export_prompts

__all__ = ["PROCESSES", "ClipSpec", "MicrosimSynth", "caption", "clip_spec", "export_prompts",
           "render_clip", "sample_params", "simulate_tracks"]
