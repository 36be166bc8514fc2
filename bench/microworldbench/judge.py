"""The judge: prompt, strict reply validation, and an OpenAI-compatible chat-completions client.

One request judges one task in one dimension: the prompt (task text, requirement, the K criteria
of the dimension numbered 1..K) plus the sampled frames as JPEG data URLs, temperature 0, JSON
output requested. A reply counts only if it holds exactly K scores, each 0 or 1; otherwise the
judge is re-asked (its reply and the reason are sent back), within the retry budget.

With `protocol="official"` the client sends the official evaluator's request instead (see
`official.py`): a body of `model` + `messages` only, no re-asking, and the official parse rule.

Secrets: the API key and the user-info part of URLs are masked in every message before it is
cut or stored; the key never appears in a repr. A URL that is neither https nor http on the
local machine is refused unless `allow_insecure_url`, and a URL that cannot work (bad scheme,
unknown host, nobody listening before any answer) stops the run at once.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import random
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable

import requests

from microworldbench import official
from microworldbench.rubrics import Task

DIMENSION_TITLES = {
  "scientific": "Scientific Accuracy",
  "visual": "Visual Quality",
  "instruction": "Instruction Following",
}
API_KEY_ENV = ("MICROWORLDBENCH_API_KEY", "EVAL_API_KEY", "OPENAI_API_KEY")
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
_FATAL_STATUS = frozenset({401, 403, 404})
_FENCE_RE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BODY_CHARS = 300  # Characters of an error body kept in messages and results.


def mask_secrets(text: str, secrets: tuple[str | None, ...] = ()) -> str:
  """`text` with every secret replaced by *** and the user-info of URLs (`user:pw@`) removed."""
  for secret in secrets:
    if secret:
      text = text.replace(secret, "***")
  return _USERINFO_RE.sub(r"\1***@", text)


def check_judge_url(url: str, allow_insecure: bool = False) -> str:
  """-> `url` when it may carry the API key: https, or http on this machine (localhost,
  127.0.0.1, ::1); plain http elsewhere only with `allow_insecure`. ValueError otherwise."""
  shown = mask_secrets(url)
  try:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
  except ValueError as e:
    raise ValueError(f"--judge_url {shown!r}: not a URL ({e})") from None
  if parts.scheme not in ("http", "https") or not host:
    raise ValueError(
      f"--judge_url {shown!r}: expected http(s)://host[:port][/v1], got scheme {parts.scheme!r} and host {host!r}"
    )
  if parts.scheme == "http" and host not in LOCAL_HOSTS and not allow_insecure:
    raise ValueError(
      f"--judge_url {shown!r}: plain http to another machine would send the API key "
      f"and the videos unencrypted; use https, or pass --allow-insecure-url"
    )
  return url


def _cause_chain(e: BaseException):
  seen = set()
  stack = [e]
  while stack:
    cur = stack.pop()
    if cur is None or id(cur) in seen:
      continue
    seen.add(id(cur))
    yield cur
    stack += [cur.__cause__, cur.__context__, getattr(cur, "reason", None)]
    stack += [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]


def url_error(e: requests.RequestException, reached: bool) -> str | None:
  """Why a request error means the URL itself cannot work (fatal at once), or None when it may be
  transient. Connection refused counts as fatal only before the endpoint has ever answered."""
  if isinstance(
    e, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)
  ):
    return f"invalid URL ({type(e).__name__})"
  if not isinstance(e, requests.ConnectionError) or isinstance(e, requests.Timeout):
    return None
  for cause in _cause_chain(e):
    if isinstance(cause, socket.gaierror) or "NameResolution" in type(cause).__name__:
      return "the host name does not resolve (DNS)"
    if isinstance(cause, ConnectionRefusedError) and not reached:
      return "connection refused, and the endpoint has not answered once in this run"
  return None


def build_prompt(task: Task, dimension: str, num_frames: int) -> str:
  """The judge prompt for one task and dimension; criteria are numbered 1..K in rubric order."""
  title = DIMENSION_TITLES[dimension]
  criteria = task.criteria[dimension]
  lines = []
  for i, c in enumerate(criteria, start=1):
    kind = (
      "Positive point (1 = the video meets it)" if c.sign > 0 else "Penalty point (1 = the video shows this problem)"
    )
    lines.append(f"{i}. [{kind}] {c.text}")
  k = len(criteria)
  return (
    f"You are an expert judge of scientific animation videos of the microscopic world. "
    f"Assess one generated video in the dimension {title}.\n\n"
    f"Task description:\n{task.task}\n\n"
    f"Detailed requirements:\n{task.requirement}\n\n"
    f"{title} criteria ({k}):\n" + "\n".join(lines) + "\n\n"
    f"You are shown {num_frames} frames of the video in chronological order. For each criterion "
    f"answer 1 or 0: for a positive point 1 means it is met; for a penalty point 1 means the "
    f"problem is present. Judge only what the frames show.\n\n"
    f"Reply with one JSON object and nothing else:\n"
    f'{{"scores": [{", ".join(f"<0 or 1 for criterion {i}>" for i in range(1, k + 1))}], '
    f'"reasoning": "<one or two sentences per criterion>"}}\n'
    f'"scores" must hold exactly {k} integers, in criterion order.'
  )


class ReplyError(ValueError):
  """A judge reply that does not hold exactly one 0/1 score per criterion."""


def check_scores(scores: Any, num_criteria: int) -> list[int]:
  """-> the scores as ints when `scores` is a list of exactly `num_criteria` values in {0, 1}."""
  if not isinstance(scores, list):
    raise ReplyError(f'"scores" is a {type(scores).__name__}, expected a list')
  if len(scores) != num_criteria:
    raise ReplyError(f'"scores" has {len(scores)} values, expected {num_criteria}')
  for s in scores:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s not in (0, 1):
      raise ReplyError(f'"scores" holds {s!r}, expected only 0 or 1')
  return [int(s) for s in scores]


def parse_reply(content: Any, num_criteria: int) -> dict[str, Any]:
  """Validates a judge reply: -> {"scores": [K ints in {0, 1}], "reasoning": str}."""
  if isinstance(content, list):  # Content given as parts: keep the text ones.
    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
  if not isinstance(content, str) or not content.strip():
    raise ReplyError("empty reply")
  text = _FENCE_RE.sub("", content.strip())
  try:
    obj = json.loads(text)
  except json.JSONDecodeError:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
      raise ReplyError("no JSON object in the reply") from None
    try:
      obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError as e:
      raise ReplyError(f"reply is not valid JSON ({e.msg})") from None
  if not isinstance(obj, dict) or "scores" not in obj:
    raise ReplyError('reply has no "scores" key')
  clean = check_scores(obj["scores"], num_criteria)
  reasoning = obj.get("reasoning", "")
  if not isinstance(reasoning, str):
    reasoning = json.dumps(reasoning, ensure_ascii=False)
  return {"scores": clean, "reasoning": reasoning}


def chat_completions_url(url: str) -> str:
  """Accepts a base URL (`http://host`, `http://host/v1`) or the full endpoint."""
  url = url.rstrip("/")
  if url.endswith("/chat/completions"):
    return url
  if url.endswith("/v1"):
    return url + "/chat/completions"
  return url + "/v1/chat/completions"


def retry_after_seconds(value: str | None) -> float | None:
  """Parses a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  url: str
  model: str
  api_key: str | None = dataclasses.field(default=None, repr=False)
  timeout: float = 120.0  # Seconds per request.
  retries: int = 4  # Extra requests after the first for errors, rate limits and invalid replies.
  backoff: float = 1.0  # First backoff in seconds, doubled each retry (with jitter).
  max_wait: float = 120.0  # Cap on one wait, Retry-After included.
  json_mode: bool = True  # Send response_format={"type": "json_object"}.
  max_tokens: int | None = None
  protocol: str = "default"  # "official": the official evaluator's request (see official.py).
  allow_insecure_url: bool = False  # Allow plain http to another machine.


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The outcome of judging one task in one dimension."""

  ok: bool
  parsed: dict[str, Any] | None  # {"scores", "reasoning"} when ok.
  raw: str | None  # The last reply text, if any.
  reason: str | None  # Why it failed, when not ok.
  requests: int  # HTTP requests made.


class JudgeFatalError(RuntimeError):
  """The endpoint refuses every request (401/403/404) or the URL cannot work: stop the run instead
  of failing each item."""


class JudgeInterrupted(RuntimeError):
  """The run is stopping; the item is left for a later resume."""


class Judge:
  """Thread-safe client; one requests.Session per thread."""

  def __init__(self, settings: JudgeSettings, stop: threading.Event | None = None):
    if settings.protocol not in official.PROTOCOLS:
      raise ValueError(f"--protocol {settings.protocol!r}: expected one of {official.PROTOCOLS}")
    check_judge_url(settings.url, settings.allow_insecure_url)
    self.settings = settings
    self.endpoint = chat_completions_url(settings.url)
    self.stop = self._stop = stop or threading.Event()  # Set: every request in flight gives up.
    self._local = threading.local()
    self._reached = False  # Set once the endpoint has answered anything.

  def _session(self) -> requests.Session:
    if not hasattr(self._local, "session"):
      self._local.session = requests.Session()
    return self._local.session

  def _scrub(self, text: str) -> str:
    return mask_secrets(text, (self.settings.api_key,))

  def _body(self, response: requests.Response) -> str:
    """The response body, masked first and cut after, as a repr for messages."""
    return repr(self._scrub(response.text)[:BODY_CHARS])

  def _wait(self, seconds: float) -> None:
    if self._stop.wait(min(max(seconds, 0.0), self.settings.max_wait)):
      raise JudgeInterrupted("stopping")

  def _backoff(self, retry: int) -> float:
    return min(self.settings.max_wait, self.settings.backoff * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)

  def _payload(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
    if self.settings.protocol == "official":
      return {"model": self.settings.model, "messages": messages}
    payload: dict[str, Any] = {"model": self.settings.model, "messages": messages, "temperature": 0}
    if self.settings.json_mode:
      payload["response_format"] = {"type": "json_object"}
    if self.settings.max_tokens:
      payload["max_tokens"] = self.settings.max_tokens
    return payload

  def judge(self, prompt: str, images: Callable[[int], list[str]], num_criteria: int, levels: int = 1) -> Verdict:
    """Judges one item. `images(level)` gives the frame data URLs at encoding level `level`
    (0 = best; a 413 steps to the next of `levels`)."""
    headers = {"Content-Type": "application/json"}
    if self.settings.api_key:
      headers["Authorization"] = f"Bearer {self.settings.api_key}"
    level, retries, requests_made = 0, 0, 0
    reask: list[dict[str, Any]] = []
    raw: str | None = None
    while True:
      if self._stop.is_set():
        raise JudgeInterrupted("stopping")
      user = {
        "role": "user",
        "content": [{"type": "text", "text": prompt}]
        + [{"type": "image_url", "image_url": {"url": u}} for u in images(level)],
      }
      requests_made += 1
      wait = None
      try:
        response = self._session().post(
          self.endpoint, headers=headers, timeout=self.settings.timeout, json=self._payload([user] + reask)
        )
      except requests.Timeout:
        reason = f"timeout after {self.settings.timeout:g}s"
      except requests.RequestException as e:
        fatal = url_error(e, self._reached)
        if fatal:
          raise JudgeFatalError(self._scrub(f"cannot reach {self.endpoint}: {fatal}; check --judge_url")) from None
        reason = f"connection error ({type(e).__name__})"
      else:
        self._reached = True
        status = response.status_code
        if status == 200:
          try:
            content = response.json()["choices"][0]["message"]["content"]
          except (ValueError, KeyError, IndexError, TypeError):
            reason = "malformed response body (not a chat completion)"
          else:
            raw = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            if self.settings.protocol == "official":  # Stored as the official script does; no re-ask.
              parsed = official.parse_reply(content)
              reason = None if parsed is not None else "unparsed reply (official parse rule)"
              return Verdict(parsed is not None, parsed, raw, reason, requests_made)
            try:
              return Verdict(True, parse_reply(content, num_criteria), raw, None, requests_made)
            except ReplyError as e:
              reason, wait = f"invalid reply: {e}", 0.0  # Re-ask at once.
              reask = [
                {"role": "assistant", "content": raw},
                {
                  "role": "user",
                  "content": f"That reply cannot be used: {e}. Answer again with only the JSON object; "
                  f'"scores" must hold exactly {num_criteria} integers, each 0 or 1, '
                  f"in criterion order.",
                },
              ]
        elif status == 413:
          level += 1
          if level < levels:
            continue  # Re-encode smaller; does not use a retry.
          return Verdict(False, None, raw, "HTTP 413: payload too large at the smallest frame encoding", requests_made)
        elif status in _FATAL_STATUS:
          raise JudgeFatalError(
            self._scrub(
              f"HTTP {status} from {self.endpoint}: {self._body(response)} (check --judge_url, "
              f"--judge-model and the API key in {'/'.join(API_KEY_ENV)})"
            )
          )
        elif status in _RETRYABLE_STATUS:
          reason = f"HTTP {status}"
          if status == 429 or status == 503:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
        else:
          return Verdict(False, None, raw, self._scrub(f"HTTP {status}: {self._body(response)}"), requests_made)
      retries += 1
      if retries > self.settings.retries:
        return Verdict(False, None, raw, self._scrub(f"{reason} (after {requests_made} requests)"), requests_made)
      self._wait(wait if wait is not None else self._backoff(retries))
