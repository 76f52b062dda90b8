"""The train step skips a non-finite update: the weights and optimizer state never see a NaN."""

import jax
import numpy as np
import pytest

from memtrain_jax import sharding
from memtrain_jax.models.params import init_params
from memtrain_jax.rl import train_step as ts
from memtrain_jax.rl.loss import LossConfig
from tests.train.train_fixtures import TINY_MODEL, optim_config, synthetic_packed

LOSS = LossConfig(kl_coef=0.0)
CHUNK = 8
# micro_batch_size 8 splits over the 8-way 'fsdp' axis of the sharded mesh.
MICRO = 8


def _meshes():
  return {"single": sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
          "fsdp8": sharding.make_mesh((1, -1, 1))}


@pytest.fixture(scope="module", params=["single", "fsdp8"])
def setup(request):
  """(mesh, optimizer, compiled step) per mesh, shared by the tests so each compiles once."""
  mesh = _meshes()[request.param]
  # warmup_steps=2: the learning rate depends on optax's update count, so a skipped update that
  # still advanced that count would change the next update.
  optimizer = ts.make_optimizer(optim_config(warmup_steps=2))
  step = ts.make_train_step(TINY_MODEL, LOSS, optimizer, mesh, chunk_size=CHUNK)
  return mesh, optimizer, step


def _packed(seed):
  return synthetic_packed(seed=seed, micro_batch_size=MICRO, num_rows=10).as_dict()


def _poisoned(arrays, field, value):
  """A copy of `arrays` with `value` written into `field` on the first loss token."""
  out = {name: np.array(v) for name, v in arrays.items()}
  where = np.argwhere(out["loss_mask"] > 0)[0]
  out[field][tuple(where)] = value
  return out


def _fresh_state(mesh, optimizer):
  return ts.create_train_state(TINY_MODEL, init_params(TINY_MODEL, seed=0), optimizer, mesh)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("field,value", [("advantages", np.nan), ("advantages", np.inf),
                                         ("old_logp", np.nan)])
def test_nonfinite_batch_leaves_the_state_bitwise_unchanged(setup, field, value):
  mesh, optimizer, step = setup
  state, metrics = step(_fresh_state(mesh, optimizer), ts.shard_batch(_packed(seed=1), mesh))
  assert float(metrics["skipped_nonfinite"]) == 0.0 and int(state.step) == 1
  before = jax.device_get(state)  # the step donates (deletes) its input
  # Moments and the update count are non-zero after one update, so "unchanged" is not trivial.
  counts = [x for x in jax.tree.leaves(before.opt_state) if np.issubdtype(x.dtype, np.integer)]
  assert counts and all(int(c) == 1 for c in counts)

  bad = _poisoned(_packed(seed=2), field, value)
  state, metrics = step(state, ts.shard_batch(bad, mesh))
  metrics = jax.device_get(metrics)
  assert metrics["skipped_nonfinite"].dtype == np.float32
  assert metrics["skipped_nonfinite"] == 1.0
  # The reported loss / gradient norm explain the skip; nothing was applied.
  assert not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]))
  assert metrics["update_norm"] == 0.0
  after = jax.device_get(state)
  assert int(after.step) == 1  # a skipped update is not counted
  _assert_bitwise_equal(after.params, before.params)
  _assert_bitwise_equal(after.opt_state, before.opt_state)
  # The state keeps the shardings the step was compiled for.
  expected = ts.state_shardings(TINY_MODEL, optimizer, mesh)
  for leaf, sharding_ in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(sharding_, leaf.ndim)


def test_skipped_update_leaves_no_trace(setup):
  mesh, optimizer, step = setup
  first, second = _packed(seed=3), _packed(seed=4)
  bad = _poisoned(second, "advantages", np.nan)
  assert first["tokens"].shape == second["tokens"].shape  # one compiled program for all calls

  def run(batches):
    state = _fresh_state(mesh, optimizer)
    skipped = []
    for batch in batches:
      previous = jax.device_get(state.params)
      state, metrics = step(state, ts.shard_batch(batch, mesh))
      skipped.append(float(metrics["skipped_nonfinite"]))
      moved = any(np.any(np.asarray(a) != np.asarray(b))
                  for a, b in zip(jax.tree.leaves(previous), jax.tree.leaves(state.params)))
      assert moved == (skipped[-1] == 0.0)
    return jax.device_get(state), skipped

  clean, clean_skipped = run([first, second])
  with_nan, nan_skipped = run([first, bad, second])
  assert clean_skipped == [0.0, 0.0] and nan_skipped == [0.0, 1.0, 0.0]
  assert int(clean.step) == int(with_nan.step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(with_nan.params))
  _assert_bitwise_equal(with_nan.params, clean.params)
  _assert_bitwise_equal(with_nan.opt_state, clean.opt_state)


@pytest.mark.parametrize("poison", ["loss_only", "one_gradient_only"])
def test_either_check_alone_skips_the_update(monkeypatch, poison):
  # Real batches make the loss and the gradients non-finite together; here only one of them is, so
  # each of the two checks (loss, global gradient norm) is exercised on its own.
  from memtrain_jax.rl import loss as loss_lib
  real = loss_lib.accumulate_gradients

  def fake(terms_fn, params, micro_batches):
    loss, grads, metrics = real(terms_fn, params, micro_batches)
    if poison == "loss_only":
      return loss * np.nan, grads, dict(metrics, loss=metrics["loss"] * np.nan)
    leaves, treedef = jax.tree.flatten(grads)
    leaves[-1] = leaves[-1].at[(0,) * leaves[-1].ndim].set(np.inf)
    return loss, jax.tree.unflatten(treedef, leaves), metrics

  monkeypatch.setattr(loss_lib, "accumulate_gradients", fake)
  mesh = _meshes()["single"]
  optimizer = ts.make_optimizer(optim_config())
  state = _fresh_state(mesh, optimizer)
  before = jax.device_get(state)
  step = ts.make_train_step(TINY_MODEL, LOSS, optimizer, mesh, chunk_size=CHUNK)
  state, metrics = step(state, ts.shard_batch(_packed(seed=5), mesh))
  metrics = jax.device_get(metrics)
  assert metrics["skipped_nonfinite"] == 1.0
  assert np.isfinite(metrics["loss"]) == (poison != "loss_only")
  assert np.isfinite(metrics["grad_norm"]) == (poison == "loss_only")
  after = jax.device_get(state)
  assert int(after.step) == 0
  _assert_bitwise_equal(after.params, before.params)
  _assert_bitwise_equal(after.opt_state, before.opt_state)
