"""The trainer's reaction to skipped non-finite updates (`train.run_updates`): counted in the
metrics, left out of the loss means, and `train.max_consecutive_skipped` in a row stop the run.

The compiled step's own skipping (weights and optimizer state untouched) is tested in
tests/rl/test_nonfinite_update.py; here the step is a stand-in that reports what a real one would.
"""

import numpy as np
import pytest

from memtrain_jax import metrics as metrics_lib
from memtrain_jax import train as train_lib
from memtrain_jax.rl.packing import PackingConfig
from tests.train import tiny_loop_config
from tests.train.train_fixtures import synthetic_rows


class ScriptedStep:
  """A train step whose updates are finite or not as scripted; the state counts applied ones."""

  def __init__(self, finite: list[bool]):
    self.finite = list(finite)
    self.calls = 0

  def __call__(self, state, batch):
    ok = self.finite[self.calls]
    self.calls += 1
    loss = 0.5 if ok else float("nan")
    return state + int(ok), {"loss": np.float32(loss), "grad_norm": np.float32(loss),
                             "skipped_nonfinite": np.float32(0.0 if ok else 1.0)}


def _run(cfg, step_fn, skipped_in_a_row=0, state=0):
  return train_lib.run_updates(
      cfg, 1, state, synthetic_rows(seed=0, num_rows=8), mesh=None, train_step=step_fn,
      logprob_fn=None, ref_params=None, packing_cfg=PackingConfig(seq_len=16, micro_batch_size=2),
      timer=metrics_lib.Timer(), skipped_in_a_row=skipped_in_a_row)


@pytest.fixture
def cfg(monkeypatch):
  # The stand-in step takes the packed batch as it is (no mesh to put it on).
  monkeypatch.setattr(train_lib.step_lib, "shard_batch", lambda packed, mesh, **kw: packed)
  cfg = tiny_loop_config.get_config("/models/tiny")
  cfg.rl.num_mini_batches = 4
  cfg.train.max_consecutive_skipped = 3
  return cfg


def test_skipped_updates_are_counted_and_left_out_of_the_means(cfg):
  state, metrics, in_a_row = _run(cfg, ScriptedStep([True, False, True, False]))
  assert state == 2
  assert metrics["train/skipped_updates"] == 2 and metrics["train/updates"] == 2
  assert metrics["train/loss"] == pytest.approx(0.5)  # the NaN losses are not averaged in
  assert in_a_row == 1  # the last update was skipped


def test_skips_in_a_row_across_steps_stop_the_run(cfg):
  # One skipped at the end of the previous step + two here = three in a row.
  step = ScriptedStep([False, False, True, True])
  with pytest.raises(train_lib.NonFiniteUpdatesError,
                     match=r"step 1: 3 updates in a row had a non-finite loss or gradient.*"
                           r"last checkpoint is the last good state.*max_consecutive_skipped"):
    _run(cfg, step, skipped_in_a_row=1)
  assert step.calls == 2  # stopped at once: no further update ran


def test_a_finite_update_resets_the_count(cfg):
  _, _, in_a_row = _run(cfg, ScriptedStep([False, False, True, False]), skipped_in_a_row=0)
  assert in_a_row == 1
