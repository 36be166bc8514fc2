"""`microworldbench evaluate`: judge every (task, dimension) of a folder of videos.

Videos are `<index>.<ext>` in one folder. Each video is decoded once; its three dimensions are
judged concurrently with the other items (`--concurrency` requests in flight). Re-running with the
same `--out` judges only the items that are missing or failed. One run at a time owns an `--out`:
it holds `<out>.lock` (its pid and host are written in it); a second run on the same `--out`
stops at once naming that pid, or with --wait_for_lock waits for the first to finish.

--protocol official sends the official evaluator's request (its template, read from
--prompt_template; 8 frames at JPEG quality 100; a body of model + messages only; its parse rule).
The judge model and the protocol are recorded in every entry of the results file, and one file
never mixes two. Entries that record neither (the official evaluator's files, older ones) are
refused unless --adopt JUDGE_MODEL:PROTOCOL states that this run's judge and protocol made them.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from microworldbench import frames as frames_lib, official
from microworldbench.files import FileLock
from microworldbench.judge import (
  API_KEY_ENV,
  Judge,
  JudgeFatalError,
  JudgeInterrupted,
  JudgeSettings,
  ReplyError,
  Verdict,
  build_prompt,
  check_scores,
)
from microworldbench.progress import Progress, add_progress_flags
from microworldbench.results import EVAL_KEY, ResultStore, name_tasks
from microworldbench.rubrics import DIMENSIONS, RubricSet, Task, load_rubrics

ADOPTED = ("judge_model", "protocol")  # What every entry records, and `--adopt` supplies when it does not.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".flv", ".wmv")


def find_videos(videos_dir: str) -> tuple[dict[int, str], list[str]]:
  """-> ({task index: path}, [files whose name is not an index]) for `<index>.<ext>` files."""
  if not os.path.isdir(videos_dir):
    raise ValueError(f"--videos {videos_dir!r} is not a directory")
  found: dict[int, str] = {}
  ignored = []
  for p in sorted(Path(videos_dir).iterdir()):
    if not p.is_file() or p.suffix.lower() not in VIDEO_EXTENSIONS:
      continue
    if not p.stem.isdigit():
      ignored.append(str(p))
      continue
    index = int(p.stem)
    if index in found:
      raise ValueError(f"{videos_dir}: two videos for task {index}: {found[index]} and {p}")
    found[index] = str(p)
  return found, ignored


def criteria_numbers(task: Task, dimension: str, protocol: str) -> list[int]:
  """The criterion numbers the judge is shown for this protocol."""
  if protocol == "official":
    return official.shown_criteria(task.raw[dimension])
  return [c.number for c in task.criteria[dimension]]


def item_done(item: dict[str, Any] | None, task: Task, dimension: str, protocol: str = "default") -> bool:
  """True when the stored result for this dimension is a valid score over the current criteria
  (under the official protocol: a reply that the official parse rule read)."""
  if not isinstance(item, dict):
    return False
  status = item.get("status")
  status = status.get(dimension) if isinstance(status, dict) else None
  numbers = criteria_numbers(task, dimension, protocol)
  if status is not None and (
    not isinstance(status, dict) or status.get("state") != "scored" or status.get("criteria") != numbers
  ):
    return False
  evaluation = item.get(EVAL_KEY[dimension])
  parsed = evaluation.get("parsed_result") if isinstance(evaluation, dict) else None
  if not isinstance(parsed, dict):
    return False
  if protocol == "official":
    return status is not None
  try:
    check_scores(parsed.get("scores"), len(numbers))
  except ReplyError:
    return False
  return True


class _FramePrefetcher:
  """Decodes each video once, in a small pool of its own, ahead of the judge requests.

  At most `ahead` videos are held (as level-0 JPEG data URLs) at a time; a video is freed when the
  last of its dimensions is judged. Smaller encodings (after a 413) are made on demand from the
  level-0 JPEGs, or with `keep_frames` from the decoded frames (the official protocol re-encodes
  its frames, not its JPEGs).
  """

  def __init__(
    self,
    videos: dict[int, str],
    units: list[tuple[int, str]],
    num_frames: int,
    ahead: int,
    stop: threading.Event,
    workers: int = 2,
    ladder: tuple[tuple[int, int | None], ...] = frames_lib.ENCODING_LADDER,
    keep_frames: bool = False,
  ):
    self._videos, self._num_frames, self._stop = videos, num_frames, stop
    self._ladder, self._keep_frames = ladder, keep_frames
    self._users = collections.Counter(i for i, _ in units)
    self._slots = threading.Semaphore(max(1, ahead))
    self._lock = threading.Lock()
    self._smaller: dict[tuple[int, int], list[str]] = {}
    self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frames")
    order = list(dict.fromkeys(i for i, _ in units))
    self._futures = {i: self._pool.submit(self._load, i) for i in order}

  def _load(self, index: int):
    while not self._slots.acquire(timeout=0.1):
      if self._stop.is_set():
        raise JudgeInterrupted("stopping")
    quality, side = self._ladder[0]
    frames = frames_lib.read_frames(self._videos[index], self._num_frames)
    return frames_lib.jpeg_data_urls(frames, quality, side), frames if self._keep_frames else None

  def urls(self, index: int):
    """-> a function level -> data URLs; raises VideoError for an unreadable video."""
    base, frames = self._futures[index].result()

    def at_level(level: int) -> list[str]:
      if level == 0:
        return base
      with self._lock:
        if (index, level) not in self._smaller:
          quality, side = self._ladder[level]
          self._smaller[(index, level)] = (
            frames_lib.jpeg_data_urls(frames, quality, side)
            if frames is not None
            else frames_lib.reencode_data_urls(base, quality, side)
          )
        return self._smaller[(index, level)]

    return at_level

  def release(self, index: int) -> None:
    with self._lock:
      self._users[index] -= 1
      if self._users[index] == 0:
        future = self._futures.pop(index)
        for level in range(1, len(self._ladder)):
          self._smaller.pop((index, level), None)
        if future.done() and not future.cancelled():
          self._slots.release()

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class Summary:
  scored: int = 0
  failed: int = 0
  already_done: int = 0
  failures: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
  missing_videos: list[int] = dataclasses.field(default_factory=list)
  unmatched_videos: list[str] = dataclasses.field(default_factory=list)
  fatal: str | None = None
  interrupted: bool = False
  skipped_journal_lines: list[str] = dataclasses.field(default_factory=list)

  def report(self) -> str:
    lines = [f"scored {self.scored}, failed {self.failed}, already done {self.already_done}"]
    if self.skipped_journal_lines:
      lines.append(
        f"{len(self.skipped_journal_lines)} journal lines skipped (their items were redone): "
        f"{_short(self.skipped_journal_lines, 3)}"
      )
    if self.missing_videos:
      lines.append(f"{len(self.missing_videos)} tasks have no video: {_short(self.missing_videos)}")
    if self.unmatched_videos:
      lines.append(f"{len(self.unmatched_videos)} videos match no task: {_short(self.unmatched_videos)}")
    if self.failures:
      kinds = collections.Counter(reason.split(" (after ")[0] for _, _, reason in self.failures)
      lines.append("failures by reason: " + "; ".join(f"{r} x{n}" for r, n in kinds.most_common()))
      for index, dim, reason in sorted(self.failures)[:20]:
        lines.append(f"  failed: task {index} {dim}: {reason}")
      if len(self.failures) > 20:
        lines.append(f"  ... and {len(self.failures) - 20} more (each item's status is in the results file)")
    if self.fatal:
      lines.append(f"stopped: {self.fatal}")
    if self.interrupted:
      lines.append("interrupted: re-run the same command to finish")
    return "\n".join(lines)


def _short(items: list, n: int = 10) -> str:
  return ", ".join(map(str, items[:n])) + (f" ... (+{len(items) - n})" if len(items) > n else "")


def evaluate(
  rubrics: RubricSet,
  videos_dir: str,
  out: str,
  settings: JudgeSettings,
  num_frames: int = 8,
  concurrency: int = 8,
  indices: set[int] | None = None,
  save_interval: float = 30.0,
  progress: bool | None = None,
  template: str | None = None,
  wait_for_lock: bool = False,
  adopt: tuple[str, str] | None = None,
) -> Summary:
  """Judges every (task, dimension) whose video is in `videos_dir` and is not done in `out`.

  `settings.protocol == "official"` needs `template` (the official prompt template's text) and
  8 frames. Holds `<out>.lock` for the whole run (`wait_for_lock`: wait for another run to finish
  instead of refusing at once). Entries of `out` that record no judge model or protocol are
  refused unless `adopt` (judge model, protocol), which must be this run's, says what judged them.
  """
  protocol = settings.protocol
  if adopt is not None and adopt != (settings.model, protocol):
    raise ValueError(
      f"--adopt {':'.join(adopt)}: this run is {settings.model}:{protocol}; a results file holds one "
      f"judge and one protocol, so only the unrecorded entries of that judge and protocol can be resumed"
    )
  if protocol == "official":
    if template is None:
      raise ValueError("--protocol official needs --prompt_template (official_judge_prompt.txt)")
    if num_frames != official.NUM_FRAMES:
      raise ValueError(f"--protocol official sends {official.NUM_FRAMES} frames, not --num_frames {num_frames}")
  elif template is not None:
    raise ValueError("--prompt_template is used only with --protocol official")
  judge = Judge(settings)  # Checks the URL and the protocol before anything is read or locked.
  videos, ignored = find_videos(videos_dir)
  with FileLock(out + ".lock", f"--out {out}", wait=wait_for_lock):
    return _evaluate_locked(
      rubrics,
      videos,
      ignored,
      out,
      settings,
      judge,
      num_frames,
      concurrency,
      indices,
      save_interval,
      progress,
      template,
      adopt,
    )


def _check_judged(store: ResultStore, out: str, model: str, protocol: str, adopt: tuple[str, str] | None) -> None:
  """Refuses a results file judged by another model or protocol, or holding entries that record
  none (the official evaluator's, older ones) unless `adopt` says they were judged as this run
  judges; then labels those entries so."""
  judges = {item["judge_model"] for item in store.items.values() if isinstance(item.get("judge_model"), str)}
  if judges - {model}:
    raise ValueError(
      f"{out}: judged by {sorted(judges)}, not {model!r}; mixing judges in one "
      f"results file would mix their scores: use another --out"
    )
  protocols = {item["protocol"] for item in store.items.values() if isinstance(item.get("protocol"), str)}
  if protocols - {protocol}:
    raise ValueError(
      f"{out}: judged with --protocol {'/'.join(sorted(protocols))}, not {protocol!r}; "
      f"one results file holds one protocol: use another --out"
    )
  unknown = {key: sorted(i for i, item in store.items.items() if not isinstance(item.get(key), str)) for key in ADOPTED}
  if any(unknown.values()) and adopt is None:
    missing = "; ".join(f"no {key} in {name_tasks(ix)}" for key, ix in unknown.items() if ix)
    raise ValueError(
      f"{out}: {missing} (the official evaluator's files and older ones record none): resuming would put the "
      f"scores of {model!r} beside those of an unknown judge; if {model!r} judged them with --protocol "
      f"{protocol}, pass --adopt {model}:{protocol}, else use another --out"
    )
  for key, value in zip(ADOPTED, adopt or ()):
    for index in unknown[key]:
      store.items[index][key] = value


def _evaluate_locked(
  rubrics,
  videos,
  ignored,
  out,
  settings,
  judge,
  num_frames,
  concurrency,
  indices,
  save_interval,
  progress,
  template,
  adopt,
) -> Summary:
  protocol = settings.protocol
  summary = Summary(unmatched_videos=ignored + [p for i, p in sorted(videos.items()) if i not in rubrics.tasks])
  wanted = sorted(i for i in rubrics.tasks if indices is None or i in indices)
  summary.missing_videos = [i for i in wanted if i not in videos]
  store = ResultStore(out)
  summary.skipped_journal_lines = list(store.skipped_journal_lines)
  try:
    _check_judged(store, out, settings.model, protocol, adopt)
  except ValueError:
    store.close()
    raise
  units = []
  for index in wanted:
    if index not in videos:
      continue
    for dim in DIMENSIONS:
      if item_done(store.items.get(index), rubrics.tasks[index], dim, protocol):
        summary.already_done += 1
      else:
        units.append((index, dim))
  stop = judge.stop
  ladder = official.ENCODING_LADDER if protocol == "official" else frames_lib.ENCODING_LADDER
  frames = _FramePrefetcher(
    videos, units, num_frames, ahead=concurrency + 4, stop=stop, ladder=ladder, keep_frames=protocol == "official"
  )

  def prompt_for(task: Task, dim: str) -> str:
    if protocol == "official":
      return official.build_prompt(template, task, dim)
    return build_prompt(task, dim, num_frames)

  bar = Progress(len(units), desc="judging ", enabled=progress)
  lock = threading.Lock()

  def run_unit(index: int, dim: str) -> None:
    task = rubrics.tasks[index]
    try:
      if stop.is_set():
        return
      try:
        images = frames.urls(index)
      except frames_lib.VideoError as e:
        verdict = Verdict(False, None, None, f"unreadable video: {e}", 0)
      else:
        try:
          verdict = judge.judge(
            prompt_for(task, dim), images, len(criteria_numbers(task, dim, protocol)), levels=len(ladder)
          )
        except JudgeFatalError:
          stop.set()  # At once, so that no other worker starts a request.
          raise
    finally:
      frames.release(index)
    status = {
      "state": "scored" if verdict.ok else "failed",
      "reason": verdict.reason,
      "requests": verdict.requests,
      "criteria": criteria_numbers(task, dim, protocol),
    }
    store.record(
      index,
      videos[index],
      dim,
      {"raw_response": verdict.raw, "parsed_result": verdict.parsed},
      status,
      settings.model,
      protocol,
    )
    with lock:
      if verdict.ok:
        summary.scored += 1
      else:
        summary.failed += 1
        summary.failures.append((index, dim, verdict.reason or ""))
    bar.update("scored" if verdict.ok else "failed")

  pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="judge")
  try:
    pending = {pool.submit(run_unit, i, d) for i, d in units}
    last_save = time.monotonic()
    while pending:
      done, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
      for fut in done:
        err = fut.exception()
        if isinstance(err, JudgeFatalError):
          summary.fatal = str(err)
          stop.set()
        elif err is not None and not isinstance(err, (JudgeInterrupted, cf.CancelledError)):
          stop.set()
          raise err
      if time.monotonic() - last_save >= save_interval:
        store.save()
        last_save = time.monotonic()
  except KeyboardInterrupt:
    summary.interrupted = True
    stop.set()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    frames.close()
    bar.close()
    store.close()
  return summary


def _parse_indices(spec: str | None) -> set[int] | None:
  if not spec:
    return None
  out: set[int] = set()
  for part in spec.split(","):
    lo, _, hi = part.strip().partition("-")
    try:
      out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
      raise ValueError(f"--indices: {part!r} is not N or N-M") from None
  return out


def api_key_from_env() -> str | None:
  for name in API_KEY_ENV:
    if os.environ.get(name):
      return os.environ[name]
  return None


def register_cli(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
    "evaluate",
    help="judge a folder of <index>.mp4 videos",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--videos", required=True, help="folder of <index>.mp4 videos")
  p.add_argument("--rubrics", required=True, help="MWBenchRubrics.json or MWBenchRubrics_norm.json")
  p.add_argument("--tasks", help="finaltasks.json (categories; optional here)")
  p.add_argument("--out", required=True, help="results JSON (resumed when it exists)")
  p.add_argument(
    "--judge_url", "--judge-url", required=True, help="OpenAI-compatible base URL or /v1/chat/completions URL"
  )
  p.add_argument("--judge_model", "--judge-model", required=True, help="model name sent to the judge, e.g. gpt-4o")
  p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
  p.add_argument("--num_frames", "--num-frames", type=int, default=8, help="frames sampled per video")
  p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
  p.add_argument("--retries", type=int, default=4, help="extra requests per item after errors or invalid replies")
  p.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
  p.add_argument("--max_wait", "--max-wait", type=float, default=120.0, help="cap on one wait, Retry-After included")
  p.add_argument(
    "--max_tokens", "--max-tokens", type=int, default=None, help="max_tokens sent to the judge (default: not sent)"
  )
  p.add_argument(
    "--no_json_mode", "--no-json-mode", action="store_true", help="do not send response_format=json_object"
  )
  p.add_argument("--indices", help="only these tasks, e.g. 1-20,33")
  p.add_argument(
    "--save_interval", "--save-interval", type=float, default=30.0, help="seconds between full rewrites of --out"
  )
  p.add_argument("--strict_rubrics", "--strict-rubrics", action="store_true", help="fail on any rubric anomaly")
  add_progress_flags(p)
  p.add_argument(
    "--protocol",
    choices=official.PROTOCOLS,
    default="default",
    help="'official': the official evaluator's request exactly (needs --prompt_template)",
  )
  p.add_argument(
    "--prompt_template",
    "--prompt-template",
    help="official_judge_prompt.txt, for --protocol official (read, never copied)",
  )
  p.add_argument(
    "--allow_insecure_url",
    "--allow-insecure-url",
    action="store_true",
    help="allow a plain-http --judge_url on another machine (the key would travel unencrypted)",
  )
  p.add_argument(
    "--wait_for_lock",
    "--wait-for-lock",
    action="store_true",
    help="when another run holds --out, wait for it to finish instead of stopping at once",
  )
  p.add_argument(
    "--adopt",
    type=_parse_adopt,
    metavar="JUDGE_MODEL:PROTOCOL",
    help="resume an --out whose entries record no judge model or protocol (the official evaluator's, or "
    "older files), stating that JUDGE_MODEL judged them with PROTOCOL; it must be this run's --judge_model "
    "and --protocol, and those entries are labelled so. Without it such a file is refused",
  )
  p.set_defaults(func=_main)


def _parse_adopt(value: str) -> tuple[str, str]:
  """'JUDGE_MODEL:PROTOCOL' -> (model, protocol), split at the last colon (model names hold colons)."""
  model, colon, protocol = value.rpartition(":")
  if not colon or not model:
    raise argparse.ArgumentTypeError(f"{value!r} is not JUDGE_MODEL:PROTOCOL (e.g. gpt-4o:official)")
  if protocol not in official.PROTOCOLS:
    raise argparse.ArgumentTypeError(f"protocol {protocol!r} in {value!r}: expected 'default' or 'official'")
  return model, protocol


def _main(args: argparse.Namespace) -> int:
  rubrics = load_rubrics(args.rubrics, args.tasks, strict=args.strict_rubrics)
  if rubrics.anomalies:
    print(rubrics.summary(), file=sys.stderr)
  if args.protocol == "official" and (args.max_tokens or args.no_json_mode):
    raise ValueError(
      "--max_tokens and --no_json_mode change the default protocol's body only; "
      "--protocol official sends model + messages and nothing else"
    )
  template = official.load_template(args.prompt_template) if args.prompt_template else None
  settings = JudgeSettings(
    url=args.judge_url,
    model=args.judge_model,
    api_key=api_key_from_env(),
    timeout=args.timeout,
    retries=args.retries,
    backoff=args.backoff,
    max_wait=args.max_wait,
    json_mode=not args.no_json_mode,
    max_tokens=args.max_tokens,
    protocol=args.protocol,
    allow_insecure_url=args.allow_insecure_url,
  )
  previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    summary = evaluate(
      rubrics,
      args.videos,
      args.out,
      settings,
      num_frames=args.num_frames,
      concurrency=args.concurrency,
      indices=_parse_indices(args.indices),
      save_interval=args.save_interval,
      progress=args.progress,
      template=template,
      wait_for_lock=args.wait_for_lock,
      adopt=args.adopt,
    )
  finally:
    signal.signal(signal.SIGTERM, previous)
  print(summary.report(), file=sys.stderr)
  print(f"results: {args.out}", file=sys.stderr)
  if summary.fatal:
    return 2
  if summary.interrupted:
    return 130
  return 3 if summary.failed else 0


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt
