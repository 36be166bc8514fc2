"""A fault-injecting judge for tests: a real HTTP server on 127.0.0.1 speaking chat completions.

Each request is matched to its item by the prompt (`TASK-<index>` in the task text, or `of task
<index>` in the criteria when the task text is empty as in the official protocol, and the
dimension title), or by `identify(prompt) -> (index, dimension)` when given; `plans[(index, dimension)]`
lists what to do on the 1st, 2nd, ... request for that item, `default` after that. Actions:
  ok        200, the true scores (`truth`) for the criteria counted in the prompt
  fence     200, the true scores wrapped in a ```json fence with prose around
  500 / 400 / 401 / 413   that HTTP status
  429       429 with `Retry-After: <retry_after>`
  timeout   sleep `hang` seconds, then answer ok (the client has given up by then)
  malformed 200 with a body that is not JSON
  prose     200 with a reply holding no JSON object
  short / long / bad_value   200 with K-1 / K+1 scores / a score of 2
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from typing import Any

TITLES = {"Scientific Accuracy": "scientific", "Visual Quality": "visual", "Instruction Following": "instruction"}
DIM_ORDER = ("scientific", "visual", "instruction")


def truth(index: int, dimension: str, k: int) -> list[int]:
  """The scores the fake judge means for an item."""
  return [(index * 7 + DIM_ORDER.index(dimension) * 3 + i * (index % 3 + 1)) % 2 for i in range(k)]


class FakeJudge:
  def __init__(
    self,
    plans: dict[tuple[int, str], list[str]] | None = None,
    default: str = "ok",
    latency: float = 0.0,
    hang: float = 2.0,
    retry_after: str = "1",
    error_body: bytes = b'{"error": {"message": "injected"}}',
    identify=None,
  ):
    self.plans = dict(plans or {})
    self.identify = identify
    self.error_body = error_body
    self.default, self.latency, self.hang, self.retry_after = default, latency, hang, retry_after
    self.log: list[dict[str, Any]] = []
    self._lock = threading.Lock()
    self._counts: dict[tuple[int, str], int] = {}
    judge = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"
      disable_nagle_algorithm = True  # Headers and body go out in two writes; no 40 ms delayed-ACK stall.

      def log_message(self, *args):
        pass

      def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        judge._handle(self, body)

    class Server(http.server.ThreadingHTTPServer):
      request_queue_size = 128  # The default backlog of 5 drops connections under concurrency.

    self.server = Server(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

  def __enter__(self) -> "FakeJudge":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.server.shutdown()
    self.server.server_close()

  def requests_for(self, index: int, dimension: str) -> list[dict[str, Any]]:
    with self._lock:
      return [e for e in self.log if e["item"] == (index, dimension)]

  def _send(self, h, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    try:
      h.send_response(status)
      h.send_header("Content-Type", "application/json")
      h.send_header("Content-Length", str(len(body)))
      for k, v in (headers or {}).items():
        h.send_header(k, v)
      h.end_headers()
      h.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
      pass  # The client timed out and left.

  def _handle(self, h, body: bytes) -> None:
    if h.path != "/v1/chat/completions":
      return self._send(h, 404, b'{"error": "not found"}')
    payload = json.loads(body)
    first = payload["messages"][0]["content"]
    prompt = next(p["text"] for p in first if p["type"] == "text")
    images = [p["image_url"]["url"] for p in first if p["type"] == "image_url"]
    if self.identify is not None:
      index, dimension = self.identify(prompt)
    else:
      found = re.search(r"TASK-(\d+)", prompt) or re.search(r"of task (\d+)", prompt)
      index = int(found.group(1))
      dimension = next(
        d for title, d in TITLES.items() if f"dimension {title}" in prompt or f"the {title} dimension" in prompt
      )
    k = len(re.findall(r"^\d+\. \[", prompt, flags=re.M))
    item = (index, dimension)
    with self._lock:
      attempt = self._counts.get(item, 0)
      self._counts[item] = attempt + 1
      plan = self.plans.get(item, [])
      action = plan[attempt] if attempt < len(plan) else self.default
      self.log.append(
        {
          "item": item,
          "attempt": attempt,
          "action": action,
          "k": k,
          "auth": h.headers.get("Authorization"),
          "model": payload.get("model"),
          "temperature": payload.get("temperature"),
          "response_format": payload.get("response_format"),
          "body": payload,
          "messages": len(payload["messages"]),
          "images": images,
          "image_bytes": sum(len(u) for u in images),
          "prompt": prompt,
          "time": time.monotonic(),
        }
      )
    if self.latency:
      time.sleep(self.latency)
    scores = truth(index, dimension, k)
    if action in ("500", "400", "401", "413"):
      return self._send(h, int(action), self.error_body)
    if action == "429":
      return self._send(h, 429, b'{"error": "slow down"}', {"Retry-After": self.retry_after})
    if action == "malformed":
      return self._send(h, 200, b'{"choices": [{"message": {"content": "{\\"scores\\": [1')
    if action == "timeout":
      time.sleep(self.hang)
    content = {
      "ok": lambda: json.dumps({"scores": scores, "reasoning": f"item {index} {dimension}"}),
      "timeout": lambda: json.dumps({"scores": scores, "reasoning": "late"}),
      "fence": lambda: "Here you go:\n```json\n" + json.dumps({"scores": scores, "reasoning": "f"}) + "\n```",
      "prose": lambda: "The video looks fine to me.",
      "short": lambda: json.dumps({"scores": scores[:-1], "reasoning": "short"}),
      "long": lambda: json.dumps({"scores": scores + [0], "reasoning": "long"}),
      "bad_value": lambda: json.dumps({"scores": [2] + scores[1:], "reasoning": "bad"}),
    }[action]()
    reply = {
      "id": "x",
      "object": "chat.completion",
      "model": payload.get("model"),
      "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    self._send(h, 200, json.dumps(reply).encode())
