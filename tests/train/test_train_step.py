"""The jitted GRPO update: sharding invariance, gradient accumulation, compile count, donation."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from memtrain_jax import sharding
from memtrain_jax.models.params import init_params
from memtrain_jax.rl import train_step as ts
from memtrain_jax.rl.loss import LossConfig
from tests.train.train_fixtures import TINY_MODEL, fixed_lines, optim_config, synthetic_packed

LOSS = LossConfig(kl_coef=0.0)
CHUNK = 8


def _run_one_step(mesh, packed, loss_config=LOSS, optimizer=None, ref_params=None):
  optimizer = optimizer or ts.make_optimizer(optim_config())
  params = init_params(TINY_MODEL, seed=0)
  state = ts.create_train_state(TINY_MODEL, params, optimizer, mesh)
  ref_logp = None
  if ref_params is not None:
    logprob_fn = ts.make_logprob_fn(TINY_MODEL, mesh, chunk_size=CHUNK)
    ref_on_mesh = jax.device_put(ref_params, sharding.param_shardings(TINY_MODEL, mesh))
    ref_logp = logprob_fn(ref_on_mesh, ts.shard_batch(packed, mesh, fields=ts.LOGPROB_BATCH_FIELDS))
  step = ts.make_train_step(TINY_MODEL, loss_config, optimizer, mesh, chunk_size=CHUNK)
  new_state, metrics = step(state, ts.shard_batch(packed, mesh, ref_logp=ref_logp))
  return jax.device_get(new_state.params), jax.device_get(metrics)


def _max_abs_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.parametrize("kl_coef", [0.0, 1e-2])
def test_sharded_step_matches_single_device(kl_coef):
  packed = synthetic_packed(seed=1, micro_batch_size=4, num_rows=10)
  loss_config = dataclasses.replace(LOSS, kl_coef=kl_coef)
  # The reference differs from the policy, so the KL term has a non-zero gradient.
  ref_params = init_params(TINY_MODEL, seed=5) if kl_coef else None
  single = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  full = sharding.make_mesh((2, 2, 2))
  # Adam's first update is lr * g / (|g| + eps): with eps = 1e-8 a gradient entry of ~1e-8 turns an
  # f32 reduction-order difference into a 1e-5 parameter difference (seen: one w_up entry). eps =
  # 1e-6 keeps that entry linear in g; the SGD test below checks the gradients themselves.
  optimizer = ts.make_optimizer(optim_config(eps=1e-6))
  params_1, metrics_1 = _run_one_step(single, packed, loss_config, optimizer, ref_params)
  params_8, metrics_8 = _run_one_step(full, packed, loss_config, optimizer, ref_params)
  start = init_params(TINY_MODEL, seed=0)
  assert _max_abs_diff(params_1, start) > 1e-4  # the update did move the parameters
  assert _max_abs_diff(params_1, params_8) < 1e-5
  for name in ("loss", "grad_norm", "clip_low_fraction", "clip_high_fraction", "entropy_mean"):
    np.testing.assert_allclose(metrics_8[name], metrics_1[name], rtol=1e-5, atol=1e-6)
  if kl_coef:
    assert metrics_1["ref_kl_mean"] > 0
    np.testing.assert_allclose(metrics_8["ref_kl_mean"], metrics_1["ref_kl_mean"], rtol=1e-5)


def test_sharded_sgd_step_matches_single_device():
  # Plain SGD with a large rate turns any gradient difference into a visible parameter difference
  # (AdamW's first update is close to lr * sign(g) and would hide it).
  packed = synthetic_packed(seed=2, micro_batch_size=4, num_rows=10)
  sgd = optax.sgd(10.0)
  single = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  params_1, _ = _run_one_step(single, packed, optimizer=sgd)
  params_8, _ = _run_one_step(sharding.make_mesh((2, 2, 2)), packed, optimizer=sgd)
  assert _max_abs_diff(params_1, init_params(TINY_MODEL, seed=0)) > 1e-3
  assert _max_abs_diff(params_1, params_8) < 1e-5


def test_gradient_accumulation_does_not_change_the_update():
  lines = fixed_lines(seed=3, num_lines=4)
  mesh = sharding.make_mesh((1, 1, 2), devices=jax.devices()[:2])
  sgd = optax.sgd(10.0)
  results = []
  for num_micro in (1, 2, 4):
    batch = {name: value.reshape(num_micro, 4 // num_micro, -1) for name, value in lines.items()}
    results.append(_run_one_step(mesh, batch, optimizer=sgd))
  (params_1, metrics_1), others = results[0], results[1:]
  assert metrics_1["num_tokens"] > 0
  for params, metrics in others:
    assert _max_abs_diff(params, params_1) < 1e-5
    np.testing.assert_allclose(metrics["loss"], metrics_1["loss"], rtol=1e-5)
    assert metrics["num_interactions"] == metrics_1["num_interactions"]


def test_second_call_compiles_nothing_and_donates_the_state():
  mesh = sharding.make_mesh((2, 2, 2))
  optimizer = ts.make_optimizer(optim_config())
  state = ts.create_train_state(TINY_MODEL, init_params(TINY_MODEL, seed=0), optimizer, mesh)
  step = ts.make_train_step(TINY_MODEL, LOSS, optimizer, mesh, chunk_size=CHUNK)
  batch_a = ts.shard_batch(synthetic_packed(seed=4, micro_batch_size=4, num_rows=10,
                                            num_micro_batches_multiple=2), mesh)
  batch_b = ts.shard_batch(synthetic_packed(seed=5, micro_batch_size=4, num_rows=10,
                                            num_micro_batches_multiple=2), mesh)
  assert batch_a["tokens"].shape == batch_b["tokens"].shape

  old_leaves = jax.tree.leaves(state)
  state, _ = step(state, batch_a)
  assert all(leaf.is_deleted() for leaf in old_leaves)
  assert step._cache_size() == 1

  # Any tracing or compilation (of the step or of anything it calls) records one of these events.
  events = []
  listener = lambda event, duration, **kwargs: events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    old_leaves = jax.tree.leaves(state)
    state, metrics = step(state, batch_b)
    jax.block_until_ready(state)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert step._cache_size() == 1
  assert not [e for e in events if e.startswith("/jax/core/compile")], events
  assert all(leaf.is_deleted() for leaf in old_leaves)
  assert int(state.step) == 2 and np.isfinite(metrics["loss"])
  # The listener does see compilations: a new number of micro-batches compiles a second program.
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state, _ = step(state, ts.shard_batch(synthetic_packed(seed=6, micro_batch_size=4, num_rows=10,
                                                num_micro_batches_multiple=3), mesh))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert step._cache_size() == 2 and "/jax/core/compile/backend_compile_duration" in events
  # The new state keeps the shardings the step was compiled for.
  expected = ts.state_shardings(TINY_MODEL, optimizer, mesh)
  for leaf, sharding_ in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(sharding_, leaf.ndim)


def test_schedule_warms_up_then_stays_constant():
  schedule = ts.make_schedule(optim_config(lr=1e-6, warmup_steps=20))
  np.testing.assert_allclose(schedule(0), 1e-6 / 20, rtol=1e-6)
  np.testing.assert_allclose(schedule(19), 1e-6, rtol=1e-6)
  np.testing.assert_allclose(schedule(250), 1e-6, rtol=1e-6)
  per_step = ts.make_schedule(optim_config(lr=1e-6, warmup_steps=20), updates_per_step=4)
  np.testing.assert_allclose(per_step(4 * 19 + 3), 1e-6, rtol=1e-6)
  np.testing.assert_allclose(per_step(3), 1e-6 / 20, rtol=1e-6)
  cosine = ts.make_schedule(optim_config(lr=1.0, warmup_steps=0, schedule="cosine", decay_steps=10,
                                         min_lr_ratio=0.1))
  np.testing.assert_allclose([cosine(0), cosine(10)], [1.0, 0.1], rtol=1e-6)


def test_kl_step_without_ref_logp_fails_clearly():
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  optimizer = ts.make_optimizer(optim_config())
  state = ts.create_train_state(TINY_MODEL, init_params(TINY_MODEL), optimizer, mesh)
  step = ts.make_train_step(TINY_MODEL, LossConfig(kl_coef=1e-3), optimizer, mesh, chunk_size=CHUNK)
  with pytest.raises(ValueError, match="ref_logp"):
    step(state, ts.shard_batch(synthetic_packed(seed=0), mesh))


def test_batch_not_divisible_by_mesh_fails_clearly():
  with pytest.raises(ValueError, match="micro_batch_size=2 is not divisible"):
    ts.shard_batch(synthetic_packed(seed=0, micro_batch_size=2), sharding.make_mesh((2, 2, 2)))



def _rows_with_shared_prompts(seed):
  """Synthetic rows where prompts repeat, as the G1 first memory updates and G2 recall answers do."""
  from tests.train.train_fixtures import synthetic_rows
  rows = synthetic_rows(seed, num_rows=11, max_prompt=12)
  for copy, source in ((1, 0), (2, 0), (3, 0), (5, 4), (6, 4), (9, 8)):
    rows.prompt_tokens[copy] = rows.prompt_tokens[source].copy()
  return rows


def test_shared_prompt_packing_gives_the_same_logprobs_and_update():
  from memtrain_jax.rl.packing import PackingConfig, pack_rows
  rows = _rows_with_shared_prompts(seed=7)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  params = init_params(TINY_MODEL, seed=3)
  logprob_fn = ts.make_logprob_fn(TINY_MODEL, mesh, chunk_size=CHUNK)
  per_row, updates = {}, {}
  for share in (False, True):
    packed = pack_rows(rows, PackingConfig(seq_len=32, micro_batch_size=2, share_prompts=share))
    logp = np.asarray(logprob_fn(params, ts.shard_batch(packed, mesh,
                                                        fields=ts.LOGPROB_BATCH_FIELDS)))
    per_row[share] = [logp[(packed.row_index == r) & (packed.loss_mask > 0)]
                      for r in range(len(rows))]
    updates[share] = _run_one_step(mesh, packed, optimizer=optax.sgd(10.0))
    if share:
      assert packed.branch_ids.max() == 4  # the four copies of row 0's prompt share one trunk
      assert packed.segment_ids.astype(bool).sum() < unshared_slots
    else:
      unshared_slots = packed.segment_ids.astype(bool).sum()
  for a, b in zip(per_row[False], per_row[True]):
    assert a.shape == b.shape and a.size > 0
    np.testing.assert_allclose(b, a, atol=1e-5)
  (params_a, metrics_a), (params_b, metrics_b) = updates[False], updates[True]
  assert _max_abs_diff(params_a, init_params(TINY_MODEL, seed=0)) > 1e-3
  assert _max_abs_diff(params_a, params_b) < 1e-5
  for name in ("loss", "num_tokens", "num_interactions", "entropy_mean"):
    np.testing.assert_allclose(metrics_b[name], metrics_a[name], rtol=1e-5)


def test_shared_prompt_branches_do_not_see_each_other():
  # Without the branch mask a branch would attend to its siblings: the test above must then fail.
  from memtrain_jax.models import decoder
  from memtrain_jax.rl.packing import PackingConfig, pack_rows
  rows = _rows_with_shared_prompts(seed=8)
  packed = pack_rows(rows, PackingConfig(seq_len=64, micro_batch_size=1))
  params = init_params(TINY_MODEL, seed=3)
  micro = {k: v[0] for k, v in packed.as_dict().items()}
  args = dict(positions=micro["positions"], segment_ids=micro["segment_ids"])
  with_branches = decoder.forward_hidden(TINY_MODEL, params, micro["tokens"],
                                         branch_ids=micro["branch_ids"], **args)
  without = decoder.forward_hidden(TINY_MODEL, params, micro["tokens"], **args)
  second_branch = (micro["branch_ids"] >= 2) & (micro["loss_mask"] > 0)
  assert second_branch.any()
  assert np.max(np.abs(np.asarray(with_branches - without))[second_branch]) > 1e-3
