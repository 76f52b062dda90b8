"""MemTrain rewards and group-relative advantages (paper §3, Eqs. 1-3), host-side numpy.

Rewards:
- recall (IMR) sample j of trajectory i:  R^I_{i,j} = 1[correct]
- end-to-end trajectory i:                R^E_i = 1[final answer correct] + lam * mean_j R^I_{i,j}

Advantages are reward minus the mean of the sample's group (Dr. GRPO), optionally divided by the group
std. A group is the G1 trajectories of one document (end-to-end) or the G2 samples of one recall
prompt (recall). The trajectory advantage is broadcast to every row of the trajectory, the final
answer included. DAPO-style filtering drops groups whose rewards are all equal: they carry no
learning signal, and keeping them would still add KL gradient and dilute the per-interaction mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from memtrain_jax.agent.rows import InteractionRows, RowKind

# Group kinds, used to key the stats and the per-kind drop switches.
END_TO_END = "e2e"
RECALL = "recall"


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  """How rewards and advantages are formed.

  Attributes:
    lam: weight of the trajectory's mean recall success in its end-to-end reward (paper: 0.5;
      the "Decoupled" ablation uses 0; the "End-to-End" ablation simply has no recall rows).
    scale_by_std: divide centred rewards by the group std (GRPO); the paper does not (Dr. GRPO).
    std_eps: added to the std before dividing.
    drop_degenerate_e2e: drop end-to-end groups whose rewards are all equal (DAPO).
    drop_degenerate_recall: drop recall groups whose rewards are all equal. The paper does not say
      whether DAPO filtering covers recall groups.
  """
  lam: float = 0.5
  scale_by_std: bool = False
  std_eps: float = 1e-6
  drop_degenerate_e2e: bool = True
  drop_degenerate_recall: bool = True


@dataclasses.dataclass
class AdvantageStats:
  """What `fill_advantages` did, for logging and for dropping rows.

  Attributes:
    row_keep: bool [rows]; False for rows of dropped (degenerate) groups.
    num_groups: groups per kind ("e2e", "recall").
    num_dropped_groups: dropped degenerate groups per kind.
    num_dropped_rows: rows of dropped groups per kind.
    mean_reward: mean sample reward per kind (before dropping; nan when a kind has no samples).
  """
  row_keep: np.ndarray
  num_groups: dict[str, int]
  num_dropped_groups: dict[str, int]
  num_dropped_rows: dict[str, int]
  mean_reward: dict[str, float]

  def as_metrics(self) -> dict[str, float]:
    metrics = {}
    for kind in (END_TO_END, RECALL):
      metrics[f"advantages/{kind}_groups"] = float(self.num_groups[kind])
      metrics[f"advantages/{kind}_dropped_groups"] = float(self.num_dropped_groups[kind])
      metrics[f"advantages/{kind}_dropped_rows"] = float(self.num_dropped_rows[kind])
      if self.num_groups[kind]:  # a kind without samples has no mean (not a NaN on the curves)
        metrics[f"rewards/{kind}_mean"] = self.mean_reward[kind]
    metrics["advantages/kept_rows"] = float(self.row_keep.sum())
    return metrics


def end_to_end_rewards(final_correct: np.ndarray, recall_correct: np.ndarray | None,
                       lam: float) -> np.ndarray:
  """R^E_i = 1[final_i correct] + lam * mean_j R^I_{i,j} (paper Eq. 2).

  Args:
    final_correct: [G] bool or {0,1}: whether trajectory i's final answer is correct.
    recall_correct: [G, G2] bool or {0,1}: whether recall sample j on trajectory i's memory is
      correct; None when there are no recall samples (the bonus is then 0).
    lam: coefficient of the recall bonus.

  Returns:
    float64 [G] rewards.
  """
  rewards = np.asarray(final_correct, np.float64)
  if recall_correct is None:
    return rewards
  recall_correct = np.asarray(recall_correct, np.float64)
  if recall_correct.ndim != 2 or recall_correct.shape[0] != rewards.shape[0]:
    raise ValueError(f"recall_correct has shape {recall_correct.shape}, expected ({rewards.shape[0]}, G2)")
  if recall_correct.shape[1] == 0:
    return rewards
  return rewards + lam * recall_correct.mean(axis=1)


def degenerate_groups(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
  """Per sample: whether every reward in the sample's group is equal (no learning signal).

  Rewards are compared exactly: they are sums of indicators and a fixed lam, so equal outcomes give
  bit-identical values.
  """
  rewards = np.asarray(rewards, np.float64)
  _, inverse = np.unique(group_ids, return_inverse=True)
  num_groups = int(inverse.max()) + 1 if inverse.size else 0
  group_max = np.full(num_groups, -np.inf)
  group_min = np.full(num_groups, np.inf)
  np.maximum.at(group_max, inverse, rewards)
  np.minimum.at(group_min, inverse, rewards)
  return (group_max == group_min)[inverse]


def group_advantages(rewards: np.ndarray, group_ids: np.ndarray, *, scale_by_std: bool = False,
                     eps: float = 1e-6) -> np.ndarray:
  """Reward minus its group's mean, optionally divided by (group std + eps).

  The std is the unbiased one (ddof=1), as in GRPO implementations (verl, Tunix). Groups whose
  rewards are all equal, singletons included, get exactly 0: their centred rewards are 0 up to
  rounding, and a singleton has no baseline to compare against.

  Args:
    rewards: [S] one reward per sample.
    group_ids: [S] the group of each sample; need not be contiguous or sorted.
    scale_by_std: divide by the group std (GRPO) instead of only centring (Dr. GRPO).
    eps: added to the std.

  Returns:
    float64 [S] advantages.
  """
  rewards = np.asarray(rewards, np.float64)
  group_ids = np.asarray(group_ids)
  if rewards.shape != group_ids.shape or rewards.ndim != 1:
    raise ValueError(f"rewards {rewards.shape} and group_ids {group_ids.shape} must be equal 1-D shapes")
  _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
  means = np.bincount(inverse, weights=rewards, minlength=counts.size) / np.maximum(counts, 1)
  centred = rewards - means[inverse]
  if scale_by_std:
    sq = np.bincount(inverse, weights=centred**2, minlength=counts.size)
    std = np.sqrt(sq / np.maximum(counts - 1, 1))
    centred = centred / (std[inverse] + eps)
  return np.where(degenerate_groups(rewards, group_ids), 0.0, centred)


def broadcast_to_rows(sample_ids: np.ndarray, sample_values: np.ndarray,
                      row_sample_id: np.ndarray) -> np.ndarray:
  """Looks up each row's value by its `sample_id` (e.g. a trajectory's advantage for all its rows).

  Args:
    sample_ids: [S] unique sample ids.
    sample_values: [S] the value of each sample.
    row_sample_id: [rows] the sample id of each row.

  Returns:
    [rows] values, dtype of `sample_values`.
  """
  sample_ids = np.asarray(sample_ids)
  row_sample_id = np.asarray(row_sample_id)
  order = np.argsort(sample_ids, kind="stable")
  sorted_ids = sample_ids[order]
  if np.any(sorted_ids[1:] == sorted_ids[:-1]):
    raise ValueError("sample_ids must be unique")
  pos = np.clip(np.searchsorted(sorted_ids, row_sample_id), 0, max(len(sorted_ids) - 1, 0))
  found = sorted_ids[pos] == row_sample_id if len(sorted_ids) else np.zeros(row_sample_id.shape, bool)
  if not np.all(found):
    missing = np.unique(row_sample_id[~found])
    raise ValueError(f"rows reference sample ids with no value: {missing[:10].tolist()}")
  return np.asarray(sample_values)[order[pos]]


@dataclasses.dataclass(frozen=True)
class _Samples:
  """One entry per scored unit (trajectory or recall sample), derived from the rows."""
  sample_id: np.ndarray  # [S]
  group_id: np.ndarray  # [S]
  trajectory_id: np.ndarray  # [S]
  is_recall: np.ndarray  # bool [S]


def _samples_from_rows(rows: InteractionRows) -> _Samples:
  """Collapses rows to samples and checks that the ids are consistent."""
  sample_ids, first_row = np.unique(rows.sample_id, return_index=True)
  is_recall_row = rows.kind == RowKind.RECALL
  samples = _Samples(sample_id=sample_ids, group_id=rows.group_id[first_row],
                     trajectory_id=rows.trajectory_id[first_row], is_recall=is_recall_row[first_row])
  # Every row of a sample must agree with the sample's group, trajectory and kind.
  for name, row_values, sample_values in (
      ("group_id", rows.group_id, samples.group_id),
      ("trajectory_id", rows.trajectory_id, samples.trajectory_id),
      ("kind (recall vs end-to-end)", is_recall_row, samples.is_recall)):
    mismatch = row_values != broadcast_to_rows(sample_ids, sample_values, rows.sample_id)
    if np.any(mismatch):
      bad = int(np.flatnonzero(mismatch)[0])
      raise ValueError(f"row {bad} (sample {rows.sample_id[bad]}) has a {name} that differs from the "
                       "other rows of its sample")
  # A group must hold one kind of sample, else its baseline would mix incomparable rewards.
  for group in np.unique(samples.group_id):
    kinds = np.unique(samples.is_recall[samples.group_id == group])
    if kinds.size > 1:
      raise ValueError(f"group {group} mixes end-to-end and recall samples")
  e2e_traj = samples.trajectory_id[~samples.is_recall]
  if np.unique(e2e_traj).size != e2e_traj.size:
    raise ValueError("two end-to-end samples share a trajectory_id")
  return samples


def memtrain_sample_rewards(samples_trajectory_id: np.ndarray, samples_is_recall: np.ndarray,
                            correct: np.ndarray, lam: float) -> np.ndarray:
  """Rewards for a flat list of samples: recall samples score 1[correct], trajectories R^E.

  A trajectory's recall bonus averages the recall samples whose `trajectory_id` is its own; with no
  such samples the bonus is 0 (the End-to-End ablation).

  Args:
    samples_trajectory_id: [S] for a trajectory its id, for a recall sample the probed trajectory.
    samples_is_recall: bool [S].
    correct: [S] bool or {0,1}: final-answer correctness for trajectories, answer correctness for
      recall samples.
    lam: coefficient of the recall bonus.

  Returns:
    float64 [S] rewards.
  """
  correct = np.asarray(correct, np.float64)
  traj_ids, traj_index = np.unique(samples_trajectory_id, return_inverse=True)
  recall = np.asarray(samples_is_recall, bool)
  recall_hits = np.bincount(traj_index[recall], weights=correct[recall], minlength=traj_ids.size)
  recall_counts = np.bincount(traj_index[recall], minlength=traj_ids.size)
  recall_rate = recall_hits / np.maximum(recall_counts, 1)
  return np.where(recall, correct, correct + lam * recall_rate[traj_index])


def fill_advantages(rows: InteractionRows, correct: Mapping[int, float],
                    config: AdvantageConfig) -> AdvantageStats:
  """Computes rewards and advantages for all rows and writes `rows.advantage` (float32, in place).

  Rows of dropped degenerate groups get advantage 0 and `row_keep` False; pass `stats.row_keep` to
  `select_rows` to remove them before packing, so that they count neither in the loss nor in its
  per-interaction normaliser.

  Args:
    rows: all rows of a training step (end-to-end and recall).
    correct: sample_id -> correctness in {0, 1}: of the final answer for a trajectory, of the
      recalled answer for a recall sample. Every sample of `rows` needs an entry.
    config: reward and advantage settings.

  Returns:
    Stats with the kept-row mask and per-kind group counts.
  """
  rows.validate()
  samples = _samples_from_rows(rows)
  missing = [int(s) for s in samples.sample_id if int(s) not in correct]
  if missing:
    raise ValueError(f"no correctness given for samples {missing[:10]}")
  sample_correct = np.array([float(correct[int(s)]) for s in samples.sample_id], np.float64)
  rewards = memtrain_sample_rewards(samples.trajectory_id, samples.is_recall, sample_correct, config.lam)
  advantages = group_advantages(rewards, samples.group_id, scale_by_std=config.scale_by_std,
                                eps=config.std_eps)
  degenerate = degenerate_groups(rewards, samples.group_id)
  drop = degenerate & np.where(samples.is_recall, config.drop_degenerate_recall, config.drop_degenerate_e2e)
  advantages = np.where(drop, 0.0, advantages)

  rows.advantage = broadcast_to_rows(samples.sample_id, advantages, rows.sample_id).astype(np.float32)
  row_drop = broadcast_to_rows(samples.sample_id, drop, rows.sample_id)
  row_is_recall = rows.kind == RowKind.RECALL

  stats_groups, stats_dropped, stats_rows, stats_reward = {}, {}, {}, {}
  for kind, sample_mask, row_mask in ((END_TO_END, ~samples.is_recall, ~row_is_recall),
                                      (RECALL, samples.is_recall, row_is_recall)):
    stats_groups[kind] = int(np.unique(samples.group_id[sample_mask]).size)
    stats_dropped[kind] = int(np.unique(samples.group_id[sample_mask & drop]).size)
    stats_rows[kind] = int(np.sum(row_drop & row_mask))
    stats_reward[kind] = float(rewards[sample_mask].mean()) if sample_mask.any() else float("nan")
  return AdvantageStats(row_keep=~row_drop, num_groups=stats_groups, num_dropped_groups=stats_dropped,
                        num_dropped_rows=stats_rows, mean_reward=stats_reward)


def select_rows(rows: InteractionRows, keep: np.ndarray) -> InteractionRows:
  """The rows where `keep` is True, every per-row field sliced alike."""
  keep = np.asarray(keep, bool)
  if keep.shape != (len(rows),):
    raise ValueError(f"keep has shape {keep.shape}, expected ({len(rows)},)")
  index = np.flatnonzero(keep)

  def pick(items):
    return [items[i] for i in index] if items else items

  return InteractionRows(
      prompt_tokens=pick(rows.prompt_tokens), completion_tokens=pick(rows.completion_tokens),
      completion_logprobs=pick(rows.completion_logprobs), sample_id=rows.sample_id[index],
      group_id=rows.group_id[index], trajectory_id=rows.trajectory_id[index], step=rows.step[index],
      kind=rows.kind[index], prompt_text=pick(rows.prompt_text),
      completion_text=pick(rows.completion_text),
      advantage=None if rows.advantage is None else rows.advantage[index])
