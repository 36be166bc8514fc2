"""The official judge protocol: the request the official evaluator (`video_evaluator.py` of the
MicroVerse repository) sends, reproduced exactly, for `evaluate --protocol official`.

- Prompt: the official template (read from the path the user gives; it is the benchmark's text,
  not the project's), with `{dim_name}`, `{task_desc}`, `{detailed_req}`, `{rubrics_text}` filled:
  task_desc and detailed_req from the row's `任务` / `具体要求` (empty with MWBenchRubrics.json,
  which stores `task` / `requirement`: the official defect, kept), and rubrics_text the lines
  `"{i}. [Positive Point] {d_i}\\n"` (s_i == "+1") or `"{i}. [Penalty Point] {d_i}\\n"` for
  i = 1..9 where both d_i and s_i exist (blocks numbered d11..d55 send no criteria).
- Frames: 8 at int(k * step + step / 2), step = frames / 8; JPEG quality 100 at full size; on
  HTTP 413 the same frames at quality 30, then 20, then 10.
- Body: `{"model", "messages": [one user message: the text, then the 8 images]}`, nothing else.
- Parse: the text from the first `{` to the last `}` as JSON; a failure is stored as null.
"""

from __future__ import annotations

import json
import re
from typing import Any

from microworldbench.files import read_bounded

PROTOCOLS = ("default", "official")
MAX_TEMPLATE_BYTES = 1 << 20  # The official template is under 1 KiB.
NUM_FRAMES = 8
ENCODING_LADDER: tuple[tuple[int, int | None], ...] = ((100, None), (30, None), (20, None), (10, None))
DIMENSION_NAMES = {
  "scientific": "Scientific Accuracy",
  "visual": "Visual Quality",
  "instruction": "Instruction Following",
}
PLACEHOLDERS = ("dim_name", "task_desc", "detailed_req", "rubrics_text")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def load_template(path: str) -> str:
  """The official prompt template from `path` (a regular file of at most MAX_TEMPLATE_BYTES);
  ValueError when it is not one, or when a placeholder is missing."""
  try:
    template = read_bounded(path, "--prompt_template", MAX_TEMPLATE_BYTES).decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"--prompt_template {path}: cannot read ({e})") from None
  missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in template]
  if missing:
    raise ValueError(
      f"--prompt_template {path}: no placeholder {', '.join('{' + p + '}' for p in missing)}; "
      f"is it official_judge_prompt.txt?"
    )
  return template


def shown_criteria(block: Any) -> list[int]:
  """Criterion numbers the official prompt shows for a raw rubric block: i in 1..9 with d_i and s_i."""
  if not isinstance(block, dict):
    return []
  return [i for i in range(1, 10) if f"d{i}" in block and f"s{i}" in block]


def rubrics_text(block: Any) -> str:
  lines = []
  for i in shown_criteria(block):
    kind = "Positive Point" if block[f"s{i}"] == "+1" else "Penalty Point"
    lines.append(f"{i}. [{kind}] {block[f'd{i}']}\n")
  return "".join(lines)


def build_prompt(template: str, task, dimension: str) -> str:
  """The official prompt for one task (`rubrics.Task`) and dimension, filled in one pass (text
  that itself looks like a placeholder is not filled again)."""
  task_desc, detailed_req = task.official_text
  values = {
    "dim_name": DIMENSION_NAMES[dimension],
    "task_desc": task_desc,
    "detailed_req": detailed_req,
    "rubrics_text": rubrics_text(task.raw[dimension]),
  }
  return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def parse_reply(content: Any) -> dict[str, Any] | None:
  """The official parse rule: JSON from the first `{` to the last `}`; None when that fails.

  The object is kept as the judge wrote it (scores are not checked here: `aggregate --mode
  official` scores them as the official script does). NaN / Infinity are read as null so that
  the results file stays valid JSON.
  """
  if not isinstance(content, str):
    return None
  start, end = content.find("{"), content.rfind("}")
  if start < 0 or end <= start:
    return None
  try:
    obj = json.loads(content[start : end + 1], parse_constant=lambda name: None)
  except json.JSONDecodeError:
    return None
  return obj if isinstance(obj, dict) else None
