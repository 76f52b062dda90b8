"""A local multi-process JAX job for the tests: N processes, each with its own CPU devices, joined
by a loopback coordinator (`sharding.maybe_initialize_distributed`) with gloo collectives."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from tests.xla_flags import single_device_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 900


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices_per_process: int,
                port: int) -> dict[str, str]:
  """The environment of one process: its devices, the shared compile cache, the coordinator."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (single_device_flags() +
                      f" --xla_force_host_platform_device_count={devices_per_process}")
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(ROOT, ".jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(MEMTRAIN_COORDINATOR=f"127.0.0.1:{port}", MEMTRAIN_NUM_PROCESSES=str(num_processes),
             MEMTRAIN_PROCESS_ID=str(process_id))
  return env


class Job:
  """`num_processes` processes of one run; process i runs `python *argv_for(i)`.

  Every process is a distributed one, a 1-process job included, so a 1 x 8 reference uses the
  same (gloo) collectives as the N-process run it is compared with. Each process's output goes to
  `<log_prefix>.process<i>.log`.
  """

  def __init__(self, argv_for: Callable[[int], Sequence[str]], log_prefix: str,
               num_processes: int, devices_per_process: int):
    port = free_port()
    self.procs, self.logs = [], []
    for i in range(num_processes):
      log = open(f"{log_prefix}.process{i}.log", "w+")
      self.logs.append(log)
      # All processes start before any is waited on: jax.distributed.initialize blocks until all
      # have joined.
      self.procs.append(subprocess.Popen(
          [sys.executable, *argv_for(i)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
          env=process_env(i, num_processes, devices_per_process, port)))

  def output(self, i: int) -> str:
    self.logs[i].flush()
    with open(self.logs[i].name) as f:
      return f.read()

  def check_alive(self) -> None:
    for i, p in enumerate(self.procs):
      if p.poll() is not None:
        self.kill()
        raise AssertionError(f"process {i} exited with {p.returncode}:\n{self.output(i)[-4000:]}")

  def finish(self, timeout: float = TIMEOUT) -> list[str]:
    """Waits for every process; their outputs. Fails (killing the rest) on a non-zero exit."""
    deadline = time.time() + timeout
    for i, p in enumerate(self.procs):
      try:
        p.wait(timeout=max(1, deadline - time.time()))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"process {i} did not finish in {timeout}s:\n"
                             f"{self.output(i)[-4000:]}")
    outputs = [self.output(i) for i in range(len(self.procs))]
    for i, p in enumerate(self.procs):
      assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{outputs[i][-4000:]}"
    return outputs

  def kill(self, i: int | None = None) -> None:
    """SIGKILL to process i (all when None): no handler runs."""
    for j, p in enumerate(self.procs):
      if i is None or i == j:
        if p.poll() is None:
          p.kill()
        p.wait()

  def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not condition():
      self.check_alive()
      if time.time() > deadline:
        self.kill()
        raise AssertionError(f"{what} did not happen in {timeout}s")
      time.sleep(0.2)
