"""Checkpoints: a thin wrapper over Orbax's `CheckpointManager` (V0 API), plus preemption handling.

A checkpoint holds two items:
- 'state': the TrainState arrays (StandardSave / StandardRestore), restored straight onto the
  target shardings of an abstract state (`rl.train_step.abstract_state`);
- 'extra': a JSON dict for everything else that exact resumption needs: the data position, RNG
  state, and metadata such as the config (JsonSave / JsonRestore).

Saves are asynchronous by default: `save` returns once the arrays are copied off the devices (so
the next, donating, train step may reuse their buffers) and the files are written in a background
thread; `close` waits for them. SIGTERM / SIGINT (TPU maintenance, `kill`, Ctrl-C) do not stop the
process at once: they set a flag, the training loop saves at the next step boundary, and exits 0.
A second SIGINT raises KeyboardInterrupt as usual, for when a save hangs.

Usage from a training loop:

  ckpt = Checkpointer(workdir / "checkpoints", every=100, keep=3)
  restored = ckpt.restore(abstract_state(...))          # None on a fresh run
  state, extra = restored if restored else (fresh_state, {"step": 0, "data_position": 0})
  done = extra["step"]                                  # training steps, not optimizer updates
  while done < num_steps:
    state, metrics = train_step(state, batch)
    done += 1
    if ckpt.step_end(done, state, extra_for(done)):
      break  # stopped by SIGTERM/SIGINT: the checkpoint of `done` is saved
  ckpt.save(done, state, extra_for(done))               # no-op when that step is saved already
  ckpt.close()                                          # waits for async writes; then exit 0

`extra["step"]` is always the step the checkpoint was saved at (`save` writes it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from memtrain_jax import paths, sharding

_STATE = "state"
_EXTRA = "extra"


@dataclasses.dataclass
class StopRequest:
  """Set by the first SIGTERM/SIGINT; the loop checks it at step boundaries.

  Attributes:
    requested: whether a stop was asked for.
    signal_name: the name of the signal that asked ('' when none).
  """
  requested: bool = False
  signal_name: str = ""


def to_json(value: Any) -> Any:
  """numpy scalars/arrays and tuples -> plain JSON types (recursively)."""
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  return value


def rng_to_json(key: jax.Array) -> list[int]:
  """A JAX PRNG key (typed or raw uint32) as a JSON list."""
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return np.asarray(data).astype(np.uint32).tolist()


def rng_from_json(data: list[int], impl: str | None = None) -> jax.Array:
  """The typed PRNG key saved by `rng_to_json`."""
  return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=impl)


class Checkpointer:
  """Periodic, async, keep-N checkpoints of (state, extra) with preemption-safe stopping."""

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int | None = 3,
               async_save: bool = True, handle_signals: bool = True):
    """Opens (or creates) a checkpoint directory.

    Args:
      directory: where step folders go (absolute; created if missing).
      every: save every this many steps (`step_end`); <= 0 saves only on request or stop.
      keep: keep the newest `keep` checkpoints (None keeps all).
      async_save: write files in a background thread.
      handle_signals: turn SIGTERM/SIGINT into a stop request (main thread only).
    """
    self.every = int(every)
    self.stop = StopRequest()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        # `step_end` decides when to save; the manager saves whatever it is given.
        save_interval_steps=1)
    self._manager = ocp.CheckpointManager(paths.as_path(directory), options=options)
    self._previous_handlers: dict[int, Any] = {}
    if handle_signals:
      self._install_signal_handlers()

  # -- signals -----------------------------------------------------------------------------------

  def _install_signal_handlers(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Checkpointer: not in the main thread; SIGTERM/SIGINT are not handled")
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    if self.stop.requested and signum == signal.SIGINT:
      # A second Ctrl-C means "now".
      raise KeyboardInterrupt
    self.stop.requested = True
    self.stop.signal_name = signal.Signals(signum).name
    logging.warning("received %s: saving a checkpoint at the next step boundary, then stopping",
                    self.stop.signal_name)

  def _restore_signal_handlers(self) -> None:
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers.clear()

  @property
  def stop_requested(self) -> bool:
    """True once a signal (or, on multi-host jobs, a preemption notice) asked the run to stop."""
    return self.stop.requested

  def request_stop(self, reason: str = "request") -> None:
    self.stop.requested = True
    self.stop.signal_name = reason

  # -- saving ------------------------------------------------------------------------------------

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _preemption_notice(self, step: int) -> bool:
    """Whether to stop after `step`, agreed by every process of a multi-process job.

    A signal may reach one host only (or reach them in different steps), but every process must
    save the same step and leave the loop together, or the others would wait forever in the
    next step's collectives. So the processes share their stop flags at every boundary (a tiny
    all-gather), and JAX's preemption sync point adds the TPU maintenance notices.
    """
    if jax.process_count() > 1:
      if self._manager.reached_preemption(step):
        self.request_stop("preemption notice")
      if sharding.any_process(self.stop.requested) and not self.stop.requested:
        self.request_stop("stop requested by another process")
    return self.stop.requested

  def save(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> bool:
    """Saves now (asynchronously). Returns False when `step` is already saved."""
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _EXTRA: ocp.args.JsonSave(to_json(dict(extra or {}, step=step)))})
    return bool(self._manager.save(step, args=args, force=True))

  def step_end(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> bool:
    """Call at every step boundary with the state after `step` updates; True means "stop now".

    Saves when `step` is a multiple of `every`, or when a stop was requested; in the latter case
    the checkpoint of `step` has been saved (asynchronously: `close` before exiting) when it
    returns True. The stop flag is read once, so a signal arriving during the call is honoured at
    the next boundary rather than lost.
    """
    stop = self._preemption_notice(step)
    if stop or (self.every > 0 and step % self.every == 0):
      self.save(step, state, extra)
    return stop

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, releases the manager and restores the previous signal handlers."""
    self._manager.wait_until_finished()
    self._manager.close()
    self._restore_signal_handlers()

  # -- restoring ---------------------------------------------------------------------------------

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """Restores (state, extra) of `step` (default: the latest) onto the target shardings.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with `sharding` set, the structure of the
        saved state (see `rl.train_step.abstract_state`).
      step: which checkpoint; None for the latest.

    Returns:
      (state, extra), or None when the directory holds no checkpoint.
    """
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state),
                                 _EXTRA: ocp.args.JsonRestore()})
    try:
      restored = self._manager.restore(step, args=args)
    except ValueError as e:
      if "not compatible with the stored shape" not in str(e):
        raise
      # Orbax's own advice (pad or truncate the arrays) would corrupt the weights.
      raise ValueError(
          f"the checkpoint of step {step} in {self.directory} does not fit this run's state: "
          f"{str(e).split('. ')[0]}. It was saved for another model or optimizer configuration, "
          "or by a memtrain_jax version before weights were stored output axes first "
          "(2026-12-01). Use a fresh --workdir, or the configuration it was saved with") from e
    return restored[_STATE], dict(restored[_EXTRA])

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
