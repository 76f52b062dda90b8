"""Counting XLA programs lowered while a block of code runs.

Every `jax.jit` cache miss lowers a jaxpr to an MLIR module before compiling it (or fetching it
from the persistent compilation cache), and JAX reports each lowering as a monitoring event. A
count of those events is therefore the number of programs the block needed that were not already
in memory, whether they were built by our own jitted functions or by a stray eager `jnp` call.
"""

from __future__ import annotations

import threading

from jax import monitoring

_LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


class CompileCounter:
  """Context manager: `with CompileCounter() as c: ...; c.count, c.names`."""

  def __init__(self):
    self.names: list[str] = []
    self._lock = threading.Lock()
    self._thread = None

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del duration
    # Other threads (e.g. a background prefetcher) are not part of the block being measured.
    if event == _LOWERING_EVENT and threading.get_ident() == self._thread:
      with self._lock:
        self.names.append(str(kwargs.get("fun_name", "?")))

  @property
  def count(self) -> int:
    return len(self.names)

  def __enter__(self) -> "CompileCounter":
    self._thread = threading.get_ident()
    monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc) -> None:
    monitoring.unregister_event_duration_listener(self._listener)
