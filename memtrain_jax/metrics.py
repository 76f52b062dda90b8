"""Training metrics: TensorBoard events, a JSONL log, a live console line, timers, rollout dumps.

  writer = MetricsWriter(workdir, total_steps=cfg.train.num_steps)
  timer = Timer()
  for step in ...:
    with timer.section("rollout"):
      rows = ...                       # host data, or arrays passed through jax.block_until_ready
    ...
    writer.write(step, {**train_metrics, **timer.pop()}, tokens=num_tokens)
    if step % cfg.train.dump_rollouts_every == 0:
      dump_rollouts(workdir, step, examples)
  writer.close()

Sections time host wall-clock, and JAX dispatches asynchronously: a section only includes device
work that was finished inside it, so block on its outputs (`jax.block_until_ready`) before leaving
it, or time a whole call with `timer.call(name, fn, *args)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

import jax
import numpy as np
from etils import epath

from memtrain_jax import paths, sharding


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """The scalar entries of `metrics` as Python floats (device arrays are fetched once)."""
  host = sharding.to_host(dict(metrics))
  out = {}
  for name, value in host.items():
    is_array_scalar = isinstance(value, np.ndarray) and value.size == 1
    if isinstance(value, (numbers.Number, np.generic)) or is_array_scalar:
      out[name] = float(np.asarray(value).reshape(()))
  return out


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Timer:
  """Named wall-clock sections of one step (rollout / logprobs / update / ...)."""

  def __init__(self):
    self._totals: dict[str, float] = {}

  @contextlib.contextmanager
  def section(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._totals[name] = self._totals.get(name, 0.0) + time.perf_counter() - start

  def call(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Runs `fn(*args, **kwargs)` in section `name`, waiting for its device results."""
    with self.section(name):
      return jax.block_until_ready(fn(*args, **kwargs))

  def pop(self) -> dict[str, float]:
    """{'time/<name>': seconds, 'time/step': their sum} since the last pop; then resets."""
    out = {f"time/{name}": value for name, value in self._totals.items()}
    out["time/step"] = sum(self._totals.values())
    self._totals = {}
    return out


class ProgressLine:
  """A console line rewritten in place (`\\r`) on a terminal; a plain line per update otherwise."""

  def __init__(self, total_steps: int, stream: TextIO | None = None):
    self.total_steps = total_steps
    self.stream = stream or sys.stderr
    self._interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._width = 0

  def update(self, step: int, step_time: float, reward: float | None, tokens_per_s: float | None,
             eta_s: float, extra: str = "") -> str:
    parts = [f"step {step}/{self.total_steps}", f"{step_time:.1f}s/step"]
    if reward is not None and math.isfinite(reward):
      parts.append(f"reward {reward:.3f}")
    if tokens_per_s is not None:
      parts.append(f"{tokens_per_s:,.0f} tok/s")
    parts.append(f"ETA {format_duration(eta_s)}")
    if extra:
      parts.append(extra)
    line = " | ".join(parts)
    if self._interactive:
      self.stream.write("\r" + line.ljust(self._width))
      self._width = len(line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()
    return line

  def close(self) -> None:
    if self._interactive and self._width:
      self.stream.write("\n")
      self.stream.flush()


class _RewrittenFile:
  """Append-only text file on object storage: GCS objects cannot be appended to (gcsfs treats mode
  'a' as 'w', and its writes only land on close), so the whole text, the earlier
  contents included, is written again as one object on every flush."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._parts = [path.read_text()] if path.exists() else []
    self._dirty = False

  def write(self, text: str) -> int:
    self._parts.append(text)
    self._dirty = True
    return len(text)

  def flush(self) -> None:
    if self._dirty:
      self._parts = ["".join(self._parts)]
      self.path.write_text(self._parts[0])
      self._dirty = False

  def close(self) -> None:
    self.flush()


def _open_for_append(path: epath.Path) -> TextIO | _RewrittenFile:
  """`path` opened for appending text: a real append locally, `_RewrittenFile` on a URL."""
  return path.open("a") if paths.is_local(path) else _RewrittenFile(path)


class MetricsWriter:
  """Writes each step's scalars to TensorBoard and JSONL and shows a progress line."""

  def __init__(self, workdir: epath.PathLike, *, total_steps: int, tensorboard: bool = True,
               console: bool = True, reward_key: str = "rewards/e2e_mean",
               stream: TextIO | None = None, write_process: bool | None = None):
    """Opens the writers under `workdir` (appending, so a resumed run continues the same files).

    Args:
      workdir: the run's directory (a local path or a URL such as gs://bucket/run); events go
        to workdir/tensorboard, lines to workdir/metrics.jsonl.
      total_steps: for the progress line and ETA.
      tensorboard: write TensorBoard event files (tensorboardX).
      console: show the progress line.
      reward_key: which metric the progress line shows as the reward.
      stream: where the progress line goes (default stderr).
      write_process: whether this process writes files; default: only process 0 of a multi-host
        job (every host computes the same replicated metrics).
    """
    self.workdir = paths.as_path(workdir)
    self.total_steps = total_steps
    self.reward_key = reward_key
    self._enabled = jax.process_index() == 0 if write_process is None else write_process
    self._tb = None
    self._jsonl = None
    self._progress = ProgressLine(total_steps, stream) if console and self._enabled else None
    self._start_time = time.time()
    self._start_step: int | None = None
    if self._enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = _open_for_append(self.workdir / "metrics.jsonl")
      if tensorboard:
        from tensorboardX import SummaryWriter
        # A string logdir: tensorboardX writes gs:// itself (str() of a gs:// epath stays a URL).
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], *, tokens: float | None = None) -> dict:
    """Records one step's metrics.

    Args:
      step: the training step the metrics belong to (1-based: after `step` steps).
      metrics: name -> scalar (floats, numpy or device scalars); non-scalars are skipped.
        'time/step' (from `Timer.pop`) drives the step time and tokens/s.
      tokens: tokens processed in the step, for tokens/s (e.g. rollout + trained tokens).

    Returns:
      The scalars as written (with 'step', 'wall_time' and 'throughput/tokens_per_s' added).
    """
    scalars = scalar_metrics(metrics)
    now = time.time()
    if self._start_step is None:
      self._start_step = step - 1
      self._start_time = now - scalars.get("time/step", 0.0)
    step_time = scalars.get("time/step", float("nan"))
    if tokens is not None and step_time > 0:
      scalars["throughput/tokens_per_s"] = tokens / step_time
    record = {"step": step, "wall_time": now, **scalars}
    if not self._enabled:
      return record
    self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()
    if self._progress is not None:
      done = step - self._start_step
      per_step = (now - self._start_time) / max(done, 1)
      self._progress.update(step, step_time, scalars.get(self.reward_key),
                            scalars.get("throughput/tokens_per_s"),
                            per_step * (self.total_steps - step))
    return record

  def write_text(self, step: int, tag: str, text: str) -> None:
    """A text entry in TensorBoard (e.g. the config, or a rollout)."""
    if self._enabled and self._tb is not None:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self._progress is not None:
      self._progress.close()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Rollout dumps.


@dataclasses.dataclass
class RolloutExample:
  """One end-to-end trajectory, as a person wants to read it.

  Attributes:
    document: the document text (or its first chunks).
    problem: the question the agent answered.
    memories: the memory after each chunk.
    answer: the final answer text.
    gold: the gold answer(s).
    reward: the trajectory's reward.
    recall: optional (prompt excerpt or target, answer, reward) of its recall samples.
  """
  document: str
  problem: str
  memories: Sequence[str]
  answer: str
  gold: str | Sequence[str]
  reward: float
  recall: Sequence[tuple[str, str, float]] = ()


def _excerpt(text: str, limit: int) -> str:
  text = text.strip()
  if len(text) <= limit:
    return text
  half = limit // 2
  return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


def format_rollout(example: RolloutExample, *, excerpt_chars: int = 600) -> str:
  gold = example.gold if isinstance(example.gold, str) else " | ".join(example.gold)
  lines = [f"reward: {example.reward:.3f}", f"problem: {example.problem.strip()}", f"gold: {gold}",
           "", "document (excerpt):", _excerpt(example.document, excerpt_chars), ""]
  for t, memory in enumerate(example.memories):
    lines += [f"memory after chunk {t}:", memory.strip() or "(empty)", ""]
  lines += ["final answer:", example.answer.strip() or "(empty)"]
  if example.recall:
    lines += ["", "recall samples:"]
    for target, answer, reward in example.recall:
      lines.append(f"  [{reward:.0f}] target {_excerpt(target, 80)!r} -> {_excerpt(answer, 200)!r}")
  return "\n".join(lines)


def dump_rollouts(workdir: epath.PathLike, step: int, examples: Sequence[RolloutExample], *,
                  max_examples: int = 2, excerpt_chars: int = 600) -> str:
  """Writes a few rollouts as text to workdir/rollouts/step_<step>.txt; returns the path (a str).

  `workdir` may be a local path or a URL such as gs://bucket/run (then the URL is returned).
  """
  directory = paths.as_path(workdir) / "rollouts"
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"step_{step:06d}.txt"
  rule = "=" * 100
  blocks = [f"{rule}\nstep {step}, rollout {i}\n{rule}\n" +
            format_rollout(example, excerpt_chars=excerpt_chars)
            for i, example in enumerate(examples[:max_examples])]
  path.write_text("\n\n".join(blocks) + "\n")
  return str(path)
