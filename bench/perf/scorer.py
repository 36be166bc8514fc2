"""MicroWorldBench scorer throughput against a local judge with a fixed latency.

Serves a chat-completions judge on 127.0.0.1 (in a child process, so that it does not share the
scorer's interpreter) that waits `--latency` seconds and then returns valid scores, makes
`--tasks` small videos, runs `microworldbench.evaluate.evaluate` with `--concurrency` requests in
flight, and prints the achieved wall time against the ideal bound calls x latency / concurrency.

  python bench/perf/scorer.py --tasks 64 --latency 0.5 --concurrency 16
"""

from __future__ import annotations

import argparse
import http.server
import json
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time

import numpy as np


def _serve(latency: float, port_queue) -> None:
  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Headers and body go out in two writes; no 40 ms delayed-ACK stall.

    def log_message(self, *args):
      pass

    def do_POST(self):
      payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      prompt = payload["messages"][0]["content"][0]["text"]
      k = len(re.findall(r"^\d+\. \[", prompt, flags=re.M))
      time.sleep(latency)
      content = json.dumps({"scores": [i % 2 for i in range(k)], "reasoning": "fixed"})
      body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

  class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # The default backlog of 5 drops connections under concurrency.

  server = Server(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  port_queue.put(server.server_address[1])
  server.serve_forever()


def _write_video(path: str, frames: int, height: int, width: int) -> None:
  """Smooth moving blobs on a gradient: JPEG sizes like rendered microscopy, unlike noise."""
  import av

  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=16)
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    stream.options = {"preset": "ultrafast"}
    for i in range(frames):
      cx, cy = width * (0.2 + 0.6 * i / frames), height * (0.5 + 0.2 * np.sin(i / 6))
      blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (height / 8) ** 2))
      texture = 0.5 + 0.5 * np.sin(xx / 7 + i / 3) * np.cos(yy / 9)
      rgb = np.stack([200 * blob + 40 * texture, 60 + 80 * texture * (1 - blob), 120 + 100 * blob], -1)
      frame = np.clip(rgb, 0, 255).astype(np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _rubrics(n: int) -> list[dict]:
  tasks = []
  for i in range(1, n + 1):
    task = {"index": i, "task": f"TASK-{i}: a cell divides in two.", "requirement": "Show mitosis."}
    for dim in ("scientific", "visual", "instruction"):
      block = {}
      for c in range(1, 6):
        block.update({f"d{c}": f"{dim} criterion {c}", f"s{c}": "-1" if c == 5 else "+1", f"w{c}": "1.0"})
      task[f"rubrics_{dim}"] = block
    tasks.append(task)
  return tasks


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tasks", type=int, default=64)
  parser.add_argument("--latency", type=float, default=0.5, help="judge latency per request, seconds")
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--frames", type=int, default=81, help="frames per video")
  parser.add_argument("--height", type=int, default=240)
  parser.add_argument("--width", type=int, default=416)
  args = parser.parse_args()

  from microworldbench.evaluate import evaluate
  from microworldbench.frames import ENCODING_LADDER, jpeg_data_urls, read_frames
  from microworldbench.judge import JudgeSettings
  from microworldbench.rubrics import load_rubrics

  work = tempfile.mkdtemp(prefix="mwb_perf_")
  ports = mp.Queue()
  judge = mp.Process(target=_serve, args=(args.latency, ports), daemon=True)
  judge.start()
  try:
    port = ports.get(timeout=30)
    videos = os.path.join(work, "videos")
    os.makedirs(videos)
    _write_video(os.path.join(videos, "1.mp4"), args.frames, args.height, args.width)
    for i in range(2, args.tasks + 1):
      shutil.copy(os.path.join(videos, "1.mp4"), os.path.join(videos, f"{i}.mp4"))
    with open(os.path.join(work, "rubrics.json"), "w") as f:
      json.dump(_rubrics(args.tasks), f)
    rubrics = load_rubrics(os.path.join(work, "rubrics.json"))
    quality, side = ENCODING_LADDER[0]
    sample = jpeg_data_urls(read_frames(os.path.join(videos, "1.mp4")), quality, side)
    payload_kb = sum(map(len, sample)) / 1024
    settings = JudgeSettings(url=f"http://127.0.0.1:{port}", model="fixed-latency", timeout=60.0)
    start = time.perf_counter()
    summary = evaluate(
      rubrics, videos, os.path.join(work, "results.json"), settings, concurrency=args.concurrency, progress=False
    )
    wall = time.perf_counter() - start
  finally:
    judge.terminate()
    shutil.rmtree(work, ignore_errors=True)
  calls = summary.scored + summary.failed
  ideal = calls * args.latency / args.concurrency
  print(
    f"tasks {args.tasks}, calls {calls} (scored {summary.scored}, failed {summary.failed}), "
    f"latency {args.latency}s, concurrency {args.concurrency}, "
    f"videos {args.frames}x{args.height}x{args.width}, images {payload_kb:.0f} KiB per request"
  )
  print(
    f"achieved {wall:.2f}s, ideal bound {ideal:.2f}s, ratio ideal/achieved {ideal / wall:.3f}, "
    f"{calls / wall:.1f} calls/s"
  )


if __name__ == "__main__":
  main()
