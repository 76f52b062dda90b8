"""Tests for memtrain rewards and advantages: hand-written cases and a loop reference."""

import numpy as np
import pytest

from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.rl import advantages as adv_lib


def _rows(specs):
  """Rows from (sample_id, group_id, trajectory_id, kind) tuples, one token each side."""
  n = len(specs)
  return InteractionRows(
      prompt_tokens=[np.array([1], np.int32)] * n, completion_tokens=[np.array([2], np.int32)] * n,
      completion_logprobs=[np.array([-0.5], np.float32)] * n,
      sample_id=np.array([s[0] for s in specs], np.int32),
      group_id=np.array([s[1] for s in specs], np.int32),
      trajectory_id=np.array([s[2] for s in specs], np.int32),
      step=np.zeros(n, np.int32), kind=np.array([s[3] for s in specs], np.int8))


def _one_document(num_recall_per_traj=2):
  """One document, trajectories 0 and 1 (a memory update and an answer each), recall probes.

  Sample ids: trajectories 0 and 1; recall samples 10, 11 probe trajectory 0 (group 100) and 12, 13
  probe trajectory 1 (group 101). The end-to-end group is 7.
  """
  mem, ans, rec = RowKind.MEMORY_UPDATE, RowKind.FINAL_ANSWER, RowKind.RECALL
  specs = [(0, 7, 0, mem), (0, 7, 0, ans), (1, 7, 1, mem), (1, 7, 1, ans)]
  for traj, group, first in ((0, 100, 10), (1, 101, 12)):
    specs += [(first + j, group, traj, rec) for j in range(num_recall_per_traj)]
  return _rows(specs)


def test_end_to_end_rewards_lambda_coupling():
  final = np.array([1, 0, 1, 0])
  recall = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_allclose(adv_lib.end_to_end_rewards(final, recall, 0.5), [1.25, 0.5, 1.0, 0.125])
  # Decoupled ablation: lam = 0 leaves the answer indicator.
  np.testing.assert_allclose(adv_lib.end_to_end_rewards(final, recall, 0.0), final)
  # End-to-End ablation: no recall samples at all.
  np.testing.assert_allclose(adv_lib.end_to_end_rewards(final, None, 0.5), final)
  with pytest.raises(ValueError, match="recall_correct"):
    adv_lib.end_to_end_rewards(final, recall[:3], 0.5)


def test_group_advantages_centre_only_and_std():
  rewards = np.array([1.0, 0.0, 2.0, 1.0, 0.0, 0.0])
  groups = np.array([5, 5, 9, 5, 9, 9])  # non-contiguous groups
  # Group 5: rewards 1, 0, 1 (mean 2/3); group 9: 2, 0, 0 (mean 2/3).
  expected = np.array([1 / 3, -2 / 3, 4 / 3, 1 / 3, -2 / 3, -2 / 3])
  np.testing.assert_allclose(adv_lib.group_advantages(rewards, groups), expected, atol=1e-12)
  # Unbiased stds: group 5 sqrt((1/9+4/9+1/9)/2) = sqrt(1/3); group 9 sqrt((16/9+4/9+4/9)/2).
  std5, std9 = np.sqrt(1 / 3), np.sqrt(12 / 9)
  eps = 1e-3
  stds = np.array([std5, std5, std9, std5, std9, std9])
  np.testing.assert_allclose(
      adv_lib.group_advantages(rewards, groups, scale_by_std=True, eps=eps), expected / (stds + eps),
      atol=1e-12)


def test_group_advantages_degenerate_and_singleton_are_zero():
  rewards = np.array([0.3, 0.3, 0.3, 1.0, 0.0, 0.7])
  groups = np.array([1, 1, 1, 2, 2, 3])
  out = adv_lib.group_advantages(rewards, groups, scale_by_std=True)
  np.testing.assert_array_equal(out[[0, 1, 2, 5]], 0.0)
  assert out[3] > 0 > out[4]
  np.testing.assert_array_equal(adv_lib.degenerate_groups(rewards, groups),
                                [True, True, True, False, False, True])


def test_broadcast_to_rows():
  out = adv_lib.broadcast_to_rows(np.array([7, 3, 5]), np.array([0.7, 0.3, 0.5]),
                                  np.array([3, 3, 7, 5, 7]))
  np.testing.assert_allclose(out, [0.3, 0.3, 0.7, 0.5, 0.7])
  with pytest.raises(ValueError, match=r"\[4\]"):
    adv_lib.broadcast_to_rows(np.array([7, 3]), np.array([0.7, 0.3]), np.array([3, 4]))


def test_fill_advantages_paper_case():
  rows = _one_document()
  # Trajectory 0: answer right, recall 1/2 -> 1.25. Trajectory 1: answer wrong, recall 2/2 -> 0.5.
  correct = {0: 1, 1: 0, 10: 1, 11: 0, 12: 1, 13: 1}
  stats = adv_lib.fill_advantages(rows, correct, adv_lib.AdvantageConfig(lam=0.5))
  assert rows.advantage.dtype == np.float32
  # e2e mean 0.875, broadcast to the memory update and the answer; recall group 101 is all-1: dropped.
  np.testing.assert_allclose(rows.advantage, [0.375, 0.375, -0.375, -0.375, 0.5, -0.5, 0.0, 0.0])
  np.testing.assert_array_equal(stats.row_keep, [1, 1, 1, 1, 1, 1, 0, 0])
  assert stats.num_groups == {"e2e": 1, "recall": 2}
  assert stats.num_dropped_groups == {"e2e": 0, "recall": 1}
  assert stats.num_dropped_rows == {"e2e": 0, "recall": 2}
  np.testing.assert_allclose(stats.mean_reward["e2e"], 0.875)
  np.testing.assert_allclose(stats.mean_reward["recall"], 0.75)
  assert stats.as_metrics()["advantages/recall_dropped_groups"] == 1.0

  kept = adv_lib.select_rows(rows, stats.row_keep)
  assert len(kept) == 6
  np.testing.assert_array_equal(kept.sample_id, [0, 0, 1, 1, 10, 11])
  np.testing.assert_allclose(kept.advantage, rows.advantage[:6])


def test_fill_advantages_drop_switches_and_ablations():
  correct = {0: 1, 1: 0, 10: 1, 11: 0, 12: 1, 13: 1}
  rows = _one_document()
  stats = adv_lib.fill_advantages(rows, correct, adv_lib.AdvantageConfig(drop_degenerate_recall=False))
  assert stats.row_keep.all() and stats.num_dropped_groups["recall"] == 0
  np.testing.assert_allclose(rows.advantage[6:], 0.0)

  # Decoupled (lam = 0): only the answers count, +-0.5.
  stats = adv_lib.fill_advantages(rows, correct, adv_lib.AdvantageConfig(lam=0.0))
  np.testing.assert_allclose(rows.advantage[:4], [0.5, 0.5, -0.5, -0.5])

  # Both answers right and lam = 0: the end-to-end group is degenerate and dropped.
  both_right = {**correct, 1: 1}
  stats = adv_lib.fill_advantages(rows, both_right, adv_lib.AdvantageConfig(lam=0.0))
  assert stats.num_dropped_groups["e2e"] == 1 and stats.num_dropped_rows["e2e"] == 4
  np.testing.assert_array_equal(stats.row_keep[:4], False)
  # With lam = 0.5 the recall bonus separates them again (1.25 vs 1.5).
  stats = adv_lib.fill_advantages(rows, both_right, adv_lib.AdvantageConfig(lam=0.5))
  np.testing.assert_allclose(rows.advantage[:4], [-0.125, -0.125, 0.125, 0.125])
  # Kept when the e2e switch is off, with zero advantage.
  stats = adv_lib.fill_advantages(rows, both_right,
                                  adv_lib.AdvantageConfig(lam=0.0, drop_degenerate_e2e=False))
  assert stats.row_keep[:4].all()
  np.testing.assert_array_equal(rows.advantage[:4], 0.0)

  # End-to-End ablation: no recall rows; the reward is the answer indicator.
  e2e_only = adv_lib.select_rows(_one_document(), np.arange(8) < 4)
  stats = adv_lib.fill_advantages(e2e_only, {0: 1, 1: 0}, adv_lib.AdvantageConfig())
  np.testing.assert_allclose(e2e_only.advantage, [0.5, 0.5, -0.5, -0.5])
  assert stats.num_groups["recall"] == 0 and np.isnan(stats.mean_reward["recall"])
  assert "rewards/recall_mean" not in stats.as_metrics()  # no NaN written to the curves


def test_fill_advantages_rejects_inconsistent_ids():
  mem, rec = RowKind.MEMORY_UPDATE, RowKind.RECALL
  with pytest.raises(ValueError, match="mixes end-to-end and recall"):
    adv_lib.fill_advantages(_rows([(0, 1, 0, mem), (5, 1, 0, rec)]), {0: 1, 5: 1},
                            adv_lib.AdvantageConfig())
  with pytest.raises(ValueError, match="group_id"):
    adv_lib.fill_advantages(_rows([(0, 1, 0, mem), (0, 2, 0, mem)]), {0: 1}, adv_lib.AdvantageConfig())
  with pytest.raises(ValueError, match="no correctness"):
    adv_lib.fill_advantages(_rows([(0, 1, 0, mem)]), {}, adv_lib.AdvantageConfig())


def _reference_row_advantages(docs, lam, scale_by_std, eps, drop_e2e, drop_recall):
  """Loop reference. docs[d] = list of trajectories (final_correct, recall_corrects, num_rows)."""
  out_e2e, out_recall = {}, {}
  for d, trajectories in enumerate(docs):
    rewards = []
    for final, recalls, _ in trajectories:
      bonus = sum(recalls) / len(recalls) if recalls else 0.0
      rewards.append(final + lam * bonus)
    for i, (_, recalls, _) in enumerate(trajectories):
      out_e2e[(d, i)] = _reference_centre(rewards, i, scale_by_std, eps, drop_e2e)
      for j in range(len(recalls)):
        out_recall[(d, i, j)] = _reference_centre([float(x) for x in recalls], j, scale_by_std, eps,
                                                  drop_recall)
  return out_e2e, out_recall


def _reference_centre(rewards, index, scale_by_std, eps, drop):
  """(advantage, kept) of rewards[index] within its group."""
  if all(r == rewards[0] for r in rewards):
    return 0.0, not drop
  mean = sum(rewards) / len(rewards)
  value = rewards[index] - mean
  if scale_by_std:
    var = sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)
    value /= var**0.5 + eps
  return value, True


@pytest.mark.parametrize("scale_by_std", [False, True])
@pytest.mark.parametrize("drop", [False, True])
def test_fill_advantages_matches_loop_reference(scale_by_std, drop):
  rng = np.random.default_rng(3 + scale_by_std + 2 * drop)
  num_docs, g1, g2 = 4, 4, 3
  docs = [[(int(rng.integers(2)), [int(x) for x in rng.integers(0, 2, g2)], int(rng.integers(1, 4)))
           for _ in range(g1)] for _ in range(num_docs)]
  docs[0] = [(1, [1] * g2, 2)] * g1  # every group of this document is degenerate
  specs, keys = [], []
  correct = {}
  next_sample, next_group = 0, 0
  for d, trajectories in enumerate(docs):
    e2e_group = next_group
    next_group += 1
    for i, (final, recalls, num_rows) in enumerate(trajectories):
      traj_sample = next_sample
      next_sample += 1
      correct[traj_sample] = final
      for step in range(num_rows):
        kind = RowKind.FINAL_ANSWER if step == num_rows - 1 else RowKind.MEMORY_UPDATE
        specs.append((traj_sample, e2e_group, traj_sample, kind))
        keys.append(("e2e", (d, i)))
      recall_group = next_group
      next_group += 1
      for j, hit in enumerate(recalls):
        correct[next_sample] = hit
        specs.append((next_sample, recall_group, traj_sample, RowKind.RECALL))
        keys.append(("recall", (d, i, j)))
        next_sample += 1
  order = rng.permutation(len(specs))  # rows need not be grouped or sorted
  rows = _rows([specs[k] for k in order])
  keys = [keys[k] for k in order]

  eps = 1e-6
  stats = adv_lib.fill_advantages(
      rows, correct, adv_lib.AdvantageConfig(lam=0.5, scale_by_std=scale_by_std, std_eps=eps,
                                             drop_degenerate_e2e=drop, drop_degenerate_recall=drop))
  ref_e2e, ref_recall = _reference_row_advantages(docs, 0.5, scale_by_std, eps, drop, drop)
  expected = [(ref_e2e if kind == "e2e" else ref_recall)[key] for kind, key in keys]
  np.testing.assert_allclose(rows.advantage, [e[0] for e in expected], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(stats.row_keep, [e[1] for e in expected])
  assert stats.num_dropped_groups["e2e"] == (1 if drop else 0)
  assert (stats.num_dropped_groups["recall"] >= g1) == drop
