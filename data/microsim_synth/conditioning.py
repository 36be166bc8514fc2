"""Structured conditioning: a procedural caption read back into its process and numbers, as tokens.

The byte tokenizer hands the model a caption's numbers as digits; `ParamTokenizer`
(`text.tokenizer="microsim_params"`) hands it the process as one token and each parameter as one
token of its quantised value, so a small model need not learn to read decimals. Only captions
written by `processes.caption` are accepted (anything else is an error naming the text); the empty
prompt is eos alone, as the byte tokenizer makes it (classifier-free guidance).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from microverse_jax.datasets.microsim_synth.processes import PROCESSES

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
# Per process: the caption's parameters in the order `processes.caption` prints them, with the range
# `processes.sample_params` draws them from (64 px field); values are clipped into it.
_PATTERNS = {
  "brownian": (
    rf"{_NUM} fluorescent beads of radius {_NUM} px .*diffusion coefficient D = {_NUM} px",
    ((6, 16), (1.2, 2.2), (0.1, 1.5)),
  ),
  "poiseuille": (
    rf"{_NUM} red blood cells, biconcave discs of radius {_NUM} px, .*vessel of radius {_NUM} px .*with {_NUM} "
    "px/frame on the vessel axis",
    ((4, 8), (3.5, 4.5), (17.9, 25.6), (1.0, 4.0)),
  ),
  "division": (
    rf"cell of radius {_NUM} px divides .*cleavage starts at frame {_NUM} and takes {_NUM} frames.*axis at "
    rf"{_NUM} degrees",
    ((8.96, 12.8), (1, 5), (2, 8), (0, 180)),
  ),
  "sedimentation": (
    rf"{_NUM} particles of radius {_NUM} px sediment .*terminal velocity {_NUM} px/frame while diffusing with "
    rf"D = {_NUM} px",
    ((8, 16), (1.5, 2.5), (0.5, 2.5), (0.05, 0.4)),
  ),
  "chemotaxis": (
    rf"{_NUM} rod-shaped bacteria {_NUM} px long .*\(x = {_NUM} px, y = {_NUM} px\): runs at {_NUM} px/frame, "
    rf"tumbling with probability {_NUM} per frame, reduced by a chemotactic bias of {_NUM}",
    ((8, 14), (3.0, 4.5), (0, 63), (0, 63), (1.0, 2.5), (0.2, 0.5), (0.5, 0.9)),
  ),
}
_PREFIX = {"brownian": "Fluorescence", "poiseuille": "Bright-field", "division": "Phase-contrast"}
_PREFIX.update(sedimentation="Bright-field", chemotaxis="Dark-field")
MAX_PARAMS = max(len(ranges) for _, ranges in _PATTERNS.values())
_FIRST_SLOT = dict(zip(PROCESSES, np.cumsum([0] + [len(_PATTERNS[p][1]) for p in PROCESSES])[:-1].tolist()))
NUM_SLOTS = sum(len(ranges) for _, ranges in _PATTERNS.values())


def parse_caption(text: str) -> tuple[str, list[float]]:
  """(process, parameter values in caption order) of a caption from `processes.caption`."""
  for process in PROCESSES:
    pattern, _ = _PATTERNS[process]
    match = re.search(pattern, text)
    if match and text.startswith(_PREFIX[process]):
      return process, [float(x) for x in match.groups()]
  raise ValueError(f"not a microsim_synth caption (text.tokenizer='microsim_params' reads only those): {text[:120]!r}")


class ParamTokenizer:
  """Caption -> process token + one token per parameter (its value in `bins` levels) + eos.

  Ids: 0 pad, 1 eos, 2 + process index, then 7 + slot * bins + level, each (process, parameter) its
  own slot. ids int32 (n, max_length), mask bool; `max_length` >= MAX_PARAMS + 2.
  """

  def __init__(self, max_length: int, bins: int = 32):
    if max_length < MAX_PARAMS + 2:
      raise ValueError(
        f"text.max_length must be >= {MAX_PARAMS + 2} for the microsim_params tokenizer, got {max_length}"
      )
    self.max_length, self.bins = max_length, bins
    self.vocab_size = 2 + len(PROCESSES) + NUM_SLOTS * bins

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(texts), self.max_length), np.int32)
    for row, text in enumerate(texts):
      tokens = self.tokens(text) if text else []
      ids[row, : len(tokens)] = tokens
      ids[row, len(tokens)] = 1
    return ids, ids > 0

  def tokens(self, text: str) -> list[int]:
    process, values = parse_caption(text)
    out = [2 + PROCESSES.index(process)]
    for slot, (value, (lo, hi)) in enumerate(zip(values, _PATTERNS[process][1]), start=_FIRST_SLOT[process]):
      level = int(round((min(max(value, lo), hi) - lo) / (hi - lo) * (self.bins - 1)))
      out.append(2 + len(PROCESSES) + slot * self.bins + level)
    return out
