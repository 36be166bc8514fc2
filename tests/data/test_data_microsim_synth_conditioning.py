"""Structured conditioning: procedural captions read back into process and parameter tokens."""

import numpy as np
import pytest

from microverse_jax.datasets.microsim_synth import PROCESSES, clip_spec
from microverse_jax.datasets.microsim_synth.conditioning import ParamTokenizer, parse_caption

KEYS = {  # the parameters in the order the caption prints them
  "brownian": ("num_particles", "radius_px", "diffusion_px2_per_frame"),
  "poiseuille": ("num_cells", "cell_radius_px", "vessel_radius_px", "max_velocity_px_per_frame"),
  "division": ("cell_radius_px", "division_start_frame", "cleavage_frames", "axis_angle_deg"),
  "sedimentation": ("num_particles", "radius_px", "settling_velocity_px_per_frame", "diffusion_px2_per_frame"),
  "chemotaxis": (
    "num_bacteria",
    "length_px",
    "source_x_px",
    "source_y_px",
    "run_speed_px_per_frame",
    "tumble_probability_per_frame",
    "chemotactic_bias",
  ),
}


@pytest.mark.parametrize("seed", [0, 5])
def test_parse_caption_recovers_every_printed_parameter(seed):
  for i in range(100):
    spec = clip_spec(i, seed=seed, num_frames=17, size=64, fps=8.0)
    process, values = parse_caption(spec.caption)
    assert process == spec.process
    expected = [spec.params[k] for k in KEYS[process]]
    # the caption prints 0-2 decimals: the parsed value is the printed one
    np.testing.assert_allclose(values, expected, atol=0.51)


def test_tokens_separate_processes_and_order_values():
  tok = ParamTokenizer(max_length=16)
  specs = [clip_spec(i, seed=0, num_frames=17, size=64, fps=8.0) for i in range(60)]
  ids, mask = tok([s.caption for s in specs])
  assert ids.shape == mask.shape == (60, 16) and ids.max() < tok.vocab_size
  for s, row, m in zip(specs, ids, mask):
    n = m.sum()
    assert row[0] == 2 + PROCESSES.index(s.process) and row[n - 1] == 1  # process token first, eos last
  brownian = [(s.params["diffusion_px2_per_frame"], row[3]) for s, row in zip(specs, ids) if s.process == "brownian"]
  d, token = np.array(brownian).T
  assert np.all(np.diff(token[np.argsort(d)]) >= 0)  # a larger D never gets a lower level
  # the same slot of different processes never shares an id
  first_param = {s.process: row[1] for s, row in zip(specs, ids)}
  assert len(set(first_param.values())) == len(PROCESSES)


def test_empty_prompt_is_eos_alone_and_free_text_is_refused():
  tok = ParamTokenizer(max_length=16)
  ids, mask = tok([""])
  assert ids[0, 0] == 1 and mask.sum() == 1
  with pytest.raises(ValueError, match="not a microsim_synth caption.*a cat on a mat"):
    tok(["a cat on a mat"])
  with pytest.raises(ValueError, match="max_length must be >= 9"):
    ParamTokenizer(max_length=4)
