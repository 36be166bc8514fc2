"""Judge client against a real localhost chat-completions server that injects faults."""

from __future__ import annotations

import email.utils
import json
import threading
import time

import pytest
from mwb_helpers import make_task
from mwb_judge_server import FakeJudge, truth

from microworldbench.judge import (
  Judge,
  JudgeFatalError,
  JudgeSettings,
  ReplyError,
  build_prompt,
  chat_completions_url,
  parse_reply,
  retry_after_seconds,
)
from microworldbench.rubrics import Criterion, Task

KEY = "sk-test-SECRET-123"


def _task(index=3, k=5):
  t = make_task(index, k=k)
  crit = {
    d: tuple(
      Criterion(i, t[f"rubrics_{d}"][f"d{i}"], -1 if t[f"rubrics_{d}"][f"s{i}"] == "-1" else 1, 1.0)
      for i in range(1, k + 1)
    )
    for d in ("scientific", "visual", "instruction")
  }
  return Task(index, t["task"], t["requirement"], None, crit, {})


def _images(level):
  # Smaller payload at each encoding level, as the 413 ladder does.
  return [f"data:image/jpeg;base64,{'A' * (4000 >> level)}"] * 2


def _settings(url, **kw):
  base = dict(url=url, model="judge-x", api_key=KEY, timeout=0.5, retries=4, backoff=0.01, max_wait=2.0)
  base.update(kw)
  return JudgeSettings(**base)


def test_parse_reply_is_strict():
  assert parse_reply('{"scores": [1, 0, 1], "reasoning": "ok"}', 3) == {"scores": [1, 0, 1], "reasoning": "ok"}
  assert parse_reply('```json\n{"scores": [1.0, 0]}\n```', 2)["scores"] == [1, 0]
  assert parse_reply('Sure. {"scores": [0, 1], "reasoning": ["a", "b"]} Done.', 2)["reasoning"] == '["a", "b"]'
  for bad, why in [
    ('{"scores": [1, 0]}', "has 2 values, expected 3"),
    ('{"scores": [1, 0, 1, 1]}', "has 4 values"),
    ('{"scores": [1, 0, 2]}', "holds 2"),
    ('{"scores": [true, false, true]}', "holds True"),
    ('{"scores": ["1", 0, 1]}', "holds '1'"),
    ('{"scores": "1,0,1"}', "expected a list"),
    ('{"score": [1, 0, 1]}', 'no "scores"'),
    ("looks good", "no JSON object"),
    ('{"scores": [1, 0,', "no JSON object"),
    ("", "empty"),
  ]:
    with pytest.raises(ReplyError, match=why):
      parse_reply(bad, 3)


def test_retry_after_and_url_helpers():
  assert retry_after_seconds("3") == 3.0
  assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
  future = email.utils.formatdate(time.time() + 30, usegmt=True)
  assert 25 < retry_after_seconds(future) <= 30
  assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
  assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
  assert chat_completions_url("http://h/x/chat/completions") == "http://h/x/chat/completions"


def test_prompt_carries_task_text_and_numbered_criteria():
  task = _task()
  prompt = build_prompt(task, "visual", 8)
  assert task.task in prompt and task.requirement in prompt  # The official evaluator sent these empty.
  for i in range(1, 6):
    assert f"{i}. [" in prompt and f"visual criterion {i} of task 3" in prompt
  assert "5. [Penalty point" in prompt and "1. [Positive point" in prompt
  assert "exactly 5 integers" in prompt


@pytest.mark.parametrize(
  "plan, ok, requests, reason",
  [
    (["ok"], True, 1, None),
    (["fence"], True, 1, None),
    (["500", "ok"], True, 2, None),
    (["429", "ok"], True, 2, None),
    (["timeout", "ok"], True, 2, None),
    (["malformed", "500", "ok"], True, 3, None),
    (["short", "ok"], True, 2, None),
    (["long", "bad_value", "prose", "ok"], True, 4, None),
    (["413", "413", "ok"], True, 3, None),
    (["short"] * 5, False, 5, "invalid reply: \"scores\" has 4 values, expected 5 (after 5 requests)"),
    (["500"] * 5, False, 5, "HTTP 500 (after 5 requests)"),
    (["timeout"] * 5, False, 5, "timeout after 0.5s (after 5 requests)"),
    (["413"] * 4, False, 4, "HTTP 413: payload too large at the smallest frame encoding"),
    (["400"], False, 1, "HTTP 400"),
  ],
)
def test_judge_fault_plans(plan, ok, requests, reason):
  with FakeJudge({(3, "scientific"): plan}, hang=1.0, retry_after="0") as server:
    verdict = Judge(_settings(server.url)).judge(build_prompt(_task(), "scientific", 2), _images, 5, levels=4)
    log = server.requests_for(3, "scientific")
  assert verdict.ok is ok and verdict.requests == requests == len(log)
  if ok:
    assert verdict.parsed["scores"] == truth(3, "scientific", 5)
    assert json.loads(verdict.raw.split("```json")[-1].strip("`\n "))["scores"] == truth(3, "scientific", 5)
  else:
    assert verdict.parsed is None and verdict.reason.startswith(reason)
  first = log[0]
  assert first["auth"] == f"Bearer {KEY}" and first["model"] == "judge-x" and first["temperature"] == 0
  assert first["response_format"] == {"type": "json_object"}
  assert len(first["images"]) == 2 and first["images"][0].startswith("data:image/jpeg;base64,")
  assert KEY not in (verdict.reason or "")


def test_invalid_reply_is_re_asked_with_the_reason():
  with FakeJudge({(3, "visual"): ["short", "ok"]}) as server:
    verdict = Judge(_settings(server.url)).judge(build_prompt(_task(), "visual", 2), _images, 5)
    log = server.requests_for(3, "visual")
  assert verdict.ok and [e["messages"] for e in log] == [1, 3]


def test_413_steps_down_the_encoding_ladder():
  with FakeJudge({(3, "visual"): ["413", "413", "ok"]}) as server:
    Judge(_settings(server.url)).judge(build_prompt(_task(), "visual", 2), _images, 5, levels=4)
    sizes = [e["image_bytes"] for e in server.requests_for(3, "visual")]
  assert sizes[0] > sizes[1] > sizes[2]


class _RecordingJudge(Judge):
  def __init__(self, *a, **kw):
    super().__init__(*a, **kw)
    self.waits = []

  def _wait(self, seconds):
    self.waits.append(seconds)
    super()._wait(0.0)


def test_429_retry_after_is_honoured_and_capped():
  with FakeJudge({(3, "visual"): ["429", "500", "429", "ok"]}, retry_after="7") as server:
    judge = _RecordingJudge(_settings(server.url, backoff=0.25, max_wait=30.0))
    verdict = judge.judge(build_prompt(_task(), "visual", 2), _images, 5)
    log = server.requests_for(3, "visual")
  assert verdict.ok and [e["action"] for e in log] == ["429", "500", "429", "ok"]
  assert judge.waits[0] == 7.0 and judge.waits[2] == 7.0  # Retry-After, not the backoff.
  assert 0.25 <= judge.waits[1] <= 0.5  # Second retry: 0.25 * 2 with jitter in [0.5, 1].


def test_auth_failure_stops_with_a_scrubbed_message():
  with FakeJudge({(3, "visual"): ["401"]}) as server:
    with pytest.raises(JudgeFatalError, match="HTTP 401") as e:
      Judge(_settings(server.url)).judge(build_prompt(_task(), "visual", 2), _images, 5)
  assert KEY not in str(e.value)


def test_connection_refused_after_an_answer_is_retried_then_failed():
  with FakeJudge() as server:
    judge = Judge(_settings(server.url, retries=2))
    assert judge.judge(build_prompt(_task(), "visual", 2), _images, 5).ok
  # The endpoint went away (asked from a new thread, so on a new connection).
  verdicts = []
  worker = threading.Thread(target=lambda: verdicts.append(judge.judge(build_prompt(_task(), "visual", 2), _images, 5)))
  worker.start()
  worker.join()
  verdict = verdicts[0]
  assert not verdict.ok and verdict.requests == 3 and verdict.reason.startswith("connection error")
