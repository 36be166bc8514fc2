"""`evaluate --protocol official` sends exactly the official evaluator's request (issue 16 part 4).

The expected prompt is computed here from the official template and the rules of
../shared/microworldbench/README.md ("The official judge request"), both read by path, and compared
with what the local fake judge receives, for a few tasks and all three dimensions: the text, a body
of model + messages only, 8 frames at the official positions at JPEG quality 100, 413 answered at
quality 30 / 20 / 10, and the official parse rule (first `{` to last `}`; a failure stored as null).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
from mwb_helpers import official_file, write_gray_video
from mwb_judge_server import FakeJudge, truth

from microworldbench.cli import main

DIMS = ("scientific", "visual", "instruction")
NAMES = {"scientific": "Scientific Accuracy", "visual": "Visual Quality", "instruction": "Instruction Following"}
KEY = "sk-official-SECRET"
TASKS = (1, 2, 277)  # 2: instruction block numbered d11..d55 (no criteria shown); 277: 4 instruction criteria.
VIDEO_FRAMES = 20  # Official positions int(k * 2.5 + 1.25): 1, 3, 6, 8, 11, 13, 16, 18.
PLANS = {
  (1, "visual"): ["413", "413", "413", "ok"],
  (2, "scientific"): ["prose"],
  (277, "scientific"): ["fence"],
  (1, "instruction"): ["short"],
}


def expected_prompt(template: str, row: dict, dim: str) -> str:
  block = row[f"rubrics_{dim}"]
  criteria = ""
  for i in range(1, 10):
    if f"d{i}" in block and f"s{i}" in block:
      criteria += f"{i}. [{'Positive Point' if block[f's{i}'] == '+1' else 'Penalty Point'}] {block[f'd{i}']}\n"
  return (
    template.replace("{dim_name}", NAMES[dim])
    .replace("{task_desc}", row.get("任务", ""))
    .replace("{detailed_req}", row.get("具体要求", ""))
    .replace("{rubrics_text}", criteria)
  )


def _jpeg(url: str):
  from PIL import Image

  assert url.startswith("data:image/jpeg;base64,")
  return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _tables(quality: int):
  from PIL import Image

  buf = io.BytesIO()
  Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, format="JPEG", quality=quality)
  return Image.open(io.BytesIO(buf.getvalue())).quantization


@pytest.fixture
def official_run(tmp_path, gray_video, monkeypatch):
  rubrics, template_path = official_file("MWBenchRubrics.json"), official_file("official_judge_prompt.txt")
  with open(template_path, encoding="utf-8") as f:
    template = f.read()
  with open(rubrics, encoding="utf-8") as f:
    rows = {r["index"]: r for r in json.load(f)}
  expected = {expected_prompt(template, rows[i], d): (i, d) for i in TASKS for d in DIMS}
  assert len(expected) == 9
  videos = tmp_path / "videos"
  videos.mkdir()
  write_gray_video(str(videos / "1.mp4"), num_frames=VIDEO_FRAMES)
  for i in TASKS[1:]:
    shutil.copy(videos / "1.mp4", videos / f"{i}.mp4")
  monkeypatch.setenv("MICROWORLDBENCH_API_KEY", KEY)
  out = str(tmp_path / "Wan_result.json")
  args = [
    "evaluate",
    "--videos",
    str(videos),
    "--rubrics",
    rubrics,
    "--out",
    out,
    "--judge-model",
    "gpt-4o",
    "--indices",
    ",".join(map(str, TASKS)),
    "--protocol",
    "official",
    "--prompt-template",
    template_path,
    "--backoff",
    "0.01",
    "--no-progress",
  ]
  with FakeJudge(PLANS, identify=lambda prompt: expected.get(prompt, (0, "scientific"))) as server:
    code = main(args + ["--judge-url", server.url])
    log = list(server.log)
  return {"code": code, "log": log, "expected": expected, "out": out, "args": args, "tmp": tmp_path, "rubrics": rubrics}


def test_official_request_text_body_frames_and_ladder(official_run):
  log, expected = official_run["log"], official_run["expected"]
  assert official_run["code"] == 3  # The prose reply is a failure (stored as null, as the official does).
  assert {e["item"] for e in log} == set(expected.values())  # Every prompt matched one expected text.
  for e in log:
    assert e["prompt"] in expected and expected[e["prompt"]] == e["item"]
    body = e["body"]
    assert set(body) == {"model", "messages"} and body["model"] == "gpt-4o"
    assert len(body["messages"]) == 1 and set(body["messages"][0]) == {"role", "content"}
    content = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user" and content[0] == {"type": "text", "text": e["prompt"]}
    assert len(content) == 9 and all(
      set(p) == {"type", "image_url"} and set(p["image_url"]) == {"url"} and p["type"] == "image_url"
      for p in content[1:]
    )
    assert e["auth"] == f"Bearer {KEY}"
  first = next(e for e in log if e["item"] == (1, "scientific"))
  images = [_jpeg(u) for u in first["images"]]
  assert all(im.size == (64, 48) for im in images)
  assert [im.quantization for im in images] == [_tables(100)] * 8
  levels = [np.asarray(im.convert("L"), dtype=float).mean() for im in images]
  positions = [int(k * VIDEO_FRAMES / 8 + VIDEO_FRAMES / 16) for k in range(8)]
  assert positions == [1, 3, 6, 8, 11, 13, 16, 18]
  assert np.allclose(levels, [10 * p for p in positions], atol=3)
  ladder = [e for e in log if e["item"] == (1, "visual")]
  assert [e["action"] for e in ladder] == ["413", "413", "413", "ok"]
  assert [_jpeg(e["images"][0]).quantization for e in ladder] == [_tables(q) for q in (100, 30, 20, 10)]
  assert all(_jpeg(u).size == (64, 48) for e in ladder for u in e["images"])
  assert [e["k"] for e in log if e["item"] == (2, "instruction")] == [0]  # d11..d55: nothing shown.
  assert [e["k"] for e in log if e["item"] == (277, "instruction")] == [4]


def test_official_parse_rule_and_recorded_protocol(official_run):
  with open(official_run["out"]) as f:
    results = {item["index"]: item for item in json.load(f)}
  assert all(item["protocol"] == "official" for item in results.values())
  prose = results[2]["scientific_eval"]
  assert prose["parsed_result"] is None and prose["raw_response"] == "The video looks fine to me."
  assert results[2]["status"]["scientific"]["state"] == "failed"
  assert results[2]["status"]["scientific"]["requests"] == 1  # No re-ask: it would change the body.
  assert results[277]["scientific_eval"]["parsed_result"] == {"scores": truth(277, "scientific", 5), "reasoning": "f"}
  short = results[1]["instruction_eval"]["parsed_result"]  # Kept as the judge wrote it, as the official.
  assert short == {"scores": truth(1, "instruction", 5)[:-1], "reasoning": "short"}
  assert results[2]["instruction_eval"]["parsed_result"]["scores"] == []
  assert results[2]["status"]["instruction"]["criteria"] == []


def test_protocols_never_mix(official_run, capsys):
  tmp, out = official_run["tmp"], official_run["out"]
  with FakeJudge() as server:  # Resuming the official file with the default protocol is refused.
    args = [a for a in official_run["args"] if a not in ("official",)]
    args = args[: args.index("--protocol")] + args[args.index("--prompt-template") + 2 :]
    assert main(args + ["--judge-url", server.url]) == 2
    assert not server.log
  assert "judged with --protocol official, not 'default'" in capsys.readouterr().err
  other = tmp / "Other_result.json"
  other.write_text(json.dumps([{"index": 1, "protocol": "default"}]))
  code = main(
    [
      "aggregate",
      "--results",
      out,
      str(other),
      "--rubrics",
      official_file("MWBenchRubrics_norm.json"),
      "--tasks",
      official_file("finaltasks.json"),
      "--mode",
      "official",
      "--bootstrap",
      "10",
    ]
  )
  err = capsys.readouterr().err
  assert code == 2 and "different protocols" in err and "'official'" in err and "'default'" in err
  summary = tmp / "s.json"
  assert (
    main(
      [
        "aggregate",
        "--results",
        out,
        "--rubrics",
        official_file("MWBenchRubrics_norm.json"),
        "--tasks",
        official_file("finaltasks.json"),
        "--mode",
        "official",
        "--bootstrap",
        "10",
        "--json",
        str(summary),
      ]
    )
    == 0
  )
  assert json.loads(summary.read_text())["protocol"] == "official"


def test_official_protocol_bad_flags(tmp_path, capsys):
  rubrics = official_file("MWBenchRubrics.json")
  base = [
    "evaluate",
    "--videos",
    str(tmp_path),
    "--rubrics",
    rubrics,
    "--out",
    str(tmp_path / "o.json"),
    "--judge-url",
    "http://127.0.0.1:9",
    "--judge-model",
    "m",
    "--protocol",
    "official",
  ]
  assert main(base) == 2 and "needs --prompt_template" in capsys.readouterr().err
  bad = tmp_path / "t.txt"
  bad.write_text("Judge {dim_name} please.")
  assert main(base + ["--prompt-template", str(bad)]) == 2
  assert "no placeholder {task_desc}" in capsys.readouterr().err
  template = official_file("official_judge_prompt.txt")
  assert main(base + ["--prompt-template", template, "--num-frames", "16"]) == 2
  assert "sends 8 frames" in capsys.readouterr().err
  assert main(base + ["--prompt-template", template, "--max-tokens", "99"]) == 2
  assert not os.path.exists(tmp_path / "o.json")
