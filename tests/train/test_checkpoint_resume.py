"""Checkpoints: round trip onto shardings, keep-N, exact resume, SIGTERM and kill -9 recovery."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import checkpoint, sharding
from memtrain_jax.models.params import init_params
from memtrain_jax.rl import train_step as ts
from tests.train import tiny_train_script
from tests.train.train_fixtures import TINY_MODEL, optim_config
from tests.xla_flags import single_device_flags

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_train_script.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_values_shardings_and_extra(tmp_path):
  mesh = sharding.make_mesh((2, 2, 2))
  optimizer = ts.make_optimizer(optim_config())
  state = ts.create_train_state(TINY_MODEL, init_params(TINY_MODEL, seed=3), optimizer, mesh)
  # Non-trivial moments, so that the optimizer state round trip is checked too.
  state = state._replace(opt_state=jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x,
                                                state.opt_state))
  key = jax.random.key(7)
  with checkpoint.Checkpointer(tmp_path, every=1, keep=2, handle_signals=False) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, {"data_position": 10 * step, "rng": checkpoint.rng_to_json(key),
                              "config": {"lr": 1e-6, "shape": (1, -1, 1)}})
    assert not ckpt.save(3, state)  # an existing step is not saved twice
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]  # keep=2
  with checkpoint.Checkpointer(tmp_path, every=1, keep=2, handle_signals=False) as ckpt:
    restored, extra = ckpt.restore(ts.abstract_state(TINY_MODEL, optimizer, mesh))
  _assert_trees_equal(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
  assert extra["step"] == 3 and extra["data_position"] == 30
  assert extra["config"] == {"lr": 1e-6, "shape": [1, -1, 1]}
  assert jnp.array_equal(jax.random.key_data(checkpoint.rng_from_json(extra["rng"])),
                         jax.random.key_data(key))


def test_restore_on_an_empty_directory_returns_none(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every=1, handle_signals=False) as ckpt:
    assert ckpt.restore(None) is None and ckpt.latest_step() is None


def test_a_checkpoint_of_other_shapes_is_refused_clearly(tmp_path):
  """A state saved for another model (or the old [in, out] weight layout) must not restore, and
  the error says what to do instead of Orbax's advice to pad or truncate."""
  single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with checkpoint.Checkpointer(tmp_path, every=1, handle_signals=False) as ckpt:
    ckpt.save(1, {"w_gate": jnp.ones((4, 6))})
    ckpt.wait()
  abstract = {"w_gate": jax.ShapeDtypeStruct((6, 4), jnp.float32, sharding=single)}
  with checkpoint.Checkpointer(tmp_path, every=1, handle_signals=False) as ckpt:
    with pytest.raises(ValueError, match=r"step 1 .* does not fit this run's state.*fresh --workdir"):
      ckpt.restore(abstract)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  straight, done = tiny_train_script.train(str(tmp_path / "a"), num_steps=6, every=2,
                                           handle_signals=False)
  assert done == 6
  # Stop after 3 steps (a stop request saves step 3), then resume from it.
  _, stopped = tiny_train_script.train(str(tmp_path / "b"), num_steps=6, every=2,
                                       handle_signals=False, stop_after=3)
  assert stopped == 3
  resumed, done = tiny_train_script.train(str(tmp_path / "b"), num_steps=6, every=2,
                                          handle_signals=False)
  assert done == 6
  _assert_trees_equal(resumed, straight)
  start = init_params(TINY_MODEL, seed=0)
  assert not np.array_equal(np.asarray(resumed["embed"]), np.asarray(start["embed"]))


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  env["XLA_FLAGS"] = single_device_flags()  # one CPU device is enough here
  return env


def _start(workdir, num_steps, out="", step_sleep=0.3):
  cmd = [sys.executable, SCRIPT, "--workdir", str(workdir), "--num_steps", str(num_steps),
         "--every", "2", "--step_sleep", str(step_sleep)]
  if out:
    cmd += ["--out", str(out)]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, step, timeout=180.0):
  """Reads the child's output until it reports `step`; returns the lines read."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line.rstrip())
    if line.strip() == f"step {step}":
      return lines
  proc.kill()
  raise AssertionError(f"child never reached step {step}:\n" + "\n".join(lines[-30:]))


def _load_params(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
  proc = _start(tmp_path, num_steps=1000)
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  stopped = [line for line in out.splitlines() if line.startswith("stopping at")]
  assert stopped, out
  stop_step = int(stopped[0].split()[-1])
  assert stop_step >= 4
  with checkpoint.Checkpointer(tmp_path / "checkpoints", every=2, handle_signals=False) as ckpt:
    # The stop step is saved even when it is not a multiple of `every`.
    assert ckpt.latest_step() == stop_step


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
  num_steps = 7
  straight = _start(tmp_path / "straight", num_steps, out=tmp_path / "straight.npz", step_sleep=0)
  out, _ = straight.communicate(timeout=300)
  assert straight.returncode == 0, out

  kill_at = random.Random().randint(2, num_steps - 1)
  victim = _start(tmp_path / "killed", num_steps)
  _wait_for_step(victim, kill_at)
  victim.kill()  # SIGKILL: no handler runs; an in-flight save is left uncommitted
  victim.communicate(timeout=60)
  assert victim.returncode == -signal.SIGKILL

  resumed = _start(tmp_path / "killed", num_steps, out=tmp_path / "resumed.npz", step_sleep=0)
  out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, out
  start_line = [line for line in out.splitlines() if line.startswith("start")][0]
  start = int(start_line.split()[1])
  # It resumed from a periodic checkpoint (every 2 steps), not from scratch, once one had time to
  # commit (the child sleeps 0.3 s per step after saving).
  assert start % 2 == 0 and start <= kill_at and (kill_at < 4 or start >= 2), (kill_at, out)
  want, got = _load_params(tmp_path / "straight.npz"), _load_params(tmp_path / "resumed.npz")
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} (killed at {kill_at})")
