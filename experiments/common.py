"""Shared helpers for the benchmarks: timing, machine description, results files."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_line() -> str:
  import jax
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  dev = jax.devices()[0]
  return (f"{dev.platform}: {getattr(dev, 'device_kind', dev.platform)}; CPU {cpu_model()}, "
          f"{os.cpu_count()} cores; load average before the run {load}")


def time_fn(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
  """Median wall-clock seconds of `fn()` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def write_results(name: str, text: str) -> str:
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, name)
  with open(path, "w") as f:
    f.write(text)
  return path
