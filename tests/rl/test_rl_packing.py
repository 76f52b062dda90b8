"""Tests for packing ragged interaction rows into fixed-shape micro-batches."""

import numpy as np
import pytest

from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.rl import packing

STOP = 0  # the stop token; also used as pad id in one test


def _random_rows(rng, num_rows, max_prompt=9, max_completion=7, vocab=20):
  prompts, completions, logprobs = [], [], []
  for _ in range(num_rows):
    prompts.append(rng.integers(1, vocab, rng.integers(1, max_prompt + 1)).astype(np.int32))
    body = rng.integers(1, vocab, rng.integers(0, max_completion)).astype(np.int32)
    completions.append(np.append(body, STOP).astype(np.int32))
    logprobs.append(-rng.random(len(completions[-1])).astype(np.float32))
  return InteractionRows(
      prompt_tokens=prompts, completion_tokens=completions, completion_logprobs=logprobs,
      sample_id=np.arange(num_rows, dtype=np.int32), group_id=np.zeros(num_rows, np.int32),
      trajectory_id=np.arange(num_rows, dtype=np.int32), step=np.zeros(num_rows, np.int32),
      kind=np.full(num_rows, RowKind.MEMORY_UPDATE, np.int8),
      advantage=rng.normal(size=num_rows).astype(np.float32))


def _flat(packed):
  return {name: value.reshape(-1, value.shape[-1]) for name, value in packed.as_dict().items()}


@pytest.mark.parametrize("pad_id", [STOP, 31])
def test_every_token_appears_once_and_masks_follow_lengths(pad_id):
  rng = np.random.default_rng(0)
  rows = _random_rows(rng, 23)
  # Every row whole (shared prompts are tested below).
  config = packing.PackingConfig(seq_len=16, micro_batch_size=3, num_micro_batches_multiple=2,
                                 pad_id=pad_id, share_prompts=False)
  packed = packing.pack_rows(rows, config)
  assert packed.tokens.shape[1:] == (3, 16) and packed.num_micro_batches % 2 == 0
  flat = _flat(packed)
  seen = np.zeros(len(rows), int)
  for line in range(flat["tokens"].shape[0]):
    for row in np.unique(flat["row_index"][line]):
      if row < 0:
        continue
      slots = np.flatnonzero(flat["row_index"][line] == row)
      assert np.all(np.diff(slots) == 1), "a row's slots must be contiguous"
      seen[row] += 1
      prompt, completion = rows.prompt_tokens[row], rows.completion_tokens[row]
      sequence = np.concatenate([prompt, completion])
      np.testing.assert_array_equal(flat["tokens"][line, slots], sequence[:-1])
      np.testing.assert_array_equal(flat["targets"][line, slots], sequence[1:])
      np.testing.assert_array_equal(flat["positions"][line, slots], np.arange(len(slots)))
      assert len(np.unique(flat["segment_ids"][line, slots])) == 1
      mask = flat["loss_mask"][line, slots]
      # Loss slots predict exactly the completion, stop token included, from slot P-1 on.
      np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(len(prompt) - 1, len(slots)))
      np.testing.assert_array_equal(flat["targets"][line, slots][mask > 0], completion)
      np.testing.assert_array_equal(flat["old_logp"][line, slots][mask > 0],
                                    rows.completion_logprobs[row])
      np.testing.assert_array_equal(flat["advantages"][line, slots][mask > 0], rows.advantage[row])
      np.testing.assert_array_equal(flat["old_logp"][line, slots][mask == 0], 0.0)
      np.testing.assert_array_equal(flat["advantages"][line, slots][mask == 0], 0.0)
      np.testing.assert_array_equal(flat["row_num_tokens"][line, slots][mask > 0], len(completion))
      np.testing.assert_array_equal(flat["row_num_tokens"][line, slots][mask == 0], 0)
      # A row alone is a trunk (its prompt but the last token) and one branch.
      np.testing.assert_array_equal(flat["branch_ids"][line, slots],
                                    (np.arange(len(slots)) >= len(prompt) - 1).astype(np.int32))
    # Segments number the rows of a line 1..n; padding is segment 0 with nothing to train.
    segments = flat["segment_ids"][line]
    num_rows_here = len(np.unique(flat["row_index"][line][flat["row_index"][line] >= 0]))
    np.testing.assert_array_equal(np.unique(segments[segments > 0]), np.arange(1, num_rows_here + 1))
    pad = flat["row_index"][line] < 0
    np.testing.assert_array_equal(segments[pad], 0)
    np.testing.assert_array_equal(flat["loss_mask"][line][pad], 0.0)
    np.testing.assert_array_equal(flat["row_num_tokens"][line][pad], 0)
    np.testing.assert_array_equal(flat["tokens"][line][pad], pad_id)
  np.testing.assert_array_equal(seen, 1)
  assert flat["loss_mask"].sum() == sum(len(c) for c in rows.completion_tokens)


def test_stop_token_equal_to_pad_id_is_trained():
  rows = _random_rows(np.random.default_rng(1), 2)
  rows.prompt_tokens = [np.array([5, 6], np.int32), np.array([7], np.int32)]
  rows.completion_tokens = [np.array([STOP], np.int32), np.array([STOP, STOP], np.int32)]
  rows.completion_logprobs = [np.array([-0.1], np.float32), np.array([-0.2, -0.3], np.float32)]
  packed = packing.pack_rows(rows, packing.PackingConfig(seq_len=8, micro_batch_size=1, pad_id=STOP))
  flat = _flat(packed)
  assert flat["tokens"].shape == (1, 8)
  # FFD puts the longer row (2 + 1 - 1 = 2 slots) first, then the other (1 + 2 - 1 = 2 slots).
  np.testing.assert_array_equal(flat["loss_mask"][0], [0, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(flat["old_logp"][0, :4], [0, -0.1, -0.2, -0.3], rtol=1e-6)
  np.testing.assert_array_equal(flat["segment_ids"][0], [1, 1, 2, 2, 0, 0, 0, 0])
  np.testing.assert_array_equal(flat["positions"][0, :4], [0, 1, 0, 1])


def test_oversized_row_names_row_and_config_field():
  rows = _random_rows(np.random.default_rng(2), 3, max_prompt=4, max_completion=4)
  rows.prompt_tokens[2] = np.arange(1, 12, dtype=np.int32)
  rows.completion_tokens[2] = np.array([3, 4, STOP], np.int32)
  rows.completion_logprobs[2] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"row 2 .*needs 13 slots.*raise PackingConfig\.seq_len"):
    packing.pack_rows(rows, packing.PackingConfig(seq_len=12, micro_batch_size=2))
  # Exactly fitting is fine.
  packing.pack_rows(rows, packing.PackingConfig(seq_len=13, micro_batch_size=2))


def test_missing_advantages_and_empty_sides_rejected():
  rows = _random_rows(np.random.default_rng(3), 2)
  rows.advantage = None
  with pytest.raises(ValueError, match="fill_advantages"):
    packing.pack_rows(rows, packing.PackingConfig(seq_len=16, micro_batch_size=1))
  rows = _random_rows(np.random.default_rng(3), 2)
  rows.prompt_tokens[1] = np.zeros((0,), np.int32)
  with pytest.raises(ValueError, match="row 1"):
    packing.pack_rows(rows, packing.PackingConfig(seq_len=16, micro_batch_size=1))


def test_first_fit_decreasing():
  bins = packing.first_fit_decreasing(np.array([5, 4, 3, 3, 2, 1]), 8)
  assert bins == [[0, 2], [1, 3, 5], [4]]


def test_micro_batch_count_padding():
  rows = _random_rows(np.random.default_rng(4), 5, max_prompt=8, max_completion=8)
  # Lines of 15 slots fit at most one row of up to 15 slots, so 5 rows need >= 2 lines.
  packed = packing.pack_rows(rows, packing.PackingConfig(seq_len=15, micro_batch_size=1,
                                                         num_micro_batches_multiple=4))
  assert packed.num_micro_batches % 4 == 0
  padded = packing.pad_num_micro_batches(packed, 3, pad_id=9)
  assert padded.num_micro_batches % 3 == 0 and padded.num_micro_batches >= packed.num_micro_batches
  extra = padded.num_micro_batches - packed.num_micro_batches
  assert extra > 0
  np.testing.assert_array_equal(padded.loss_mask[-extra:], 0.0)
  np.testing.assert_array_equal(padded.row_index[-extra:], -1)
  np.testing.assert_array_equal(padded.tokens[-extra:], 9)
  for name, value in packed.as_dict().items():
    np.testing.assert_array_equal(getattr(padded, name)[:packed.num_micro_batches], value)
  assert packing.pad_num_micro_batches(padded, 3) is padded
  one = padded.micro_batch(0)
  assert one["tokens"].shape == (1, 15)


def _shared_rows(rng, prompt_lens, copies, max_completion=6, vocab=30):
  """Rows whose prompts repeat: prompt i appears copies[i] times, the copies interleaved."""
  prompts = [rng.integers(1, vocab, n).astype(np.int32) for n in prompt_lens]
  order = [i for i, c in enumerate(copies) for _ in range(c)]
  rng.shuffle(order)
  rows = _random_rows(rng, len(order), max_completion=max_completion, vocab=vocab)
  rows.prompt_tokens = [prompts[i].copy() for i in order]
  return rows, order


def test_shared_prompts_pack_as_prefix_trees():
  rng = np.random.default_rng(5)
  rows, order = _shared_rows(rng, prompt_lens=[9, 1, 6, 12], copies=[4, 3, 1, 2])
  config = packing.PackingConfig(seq_len=40, micro_batch_size=2, share_prompts=True)
  packed = packing.pack_rows(rows, config)
  flat = _flat(packed)
  whole = packing.pack_rows(rows, packing.PackingConfig(seq_len=40, micro_batch_size=2,
                                                        share_prompts=False))
  # Each extra copy of a prompt saves its P - 1 trunk slots.
  saved = sum((c - 1) * (n - 1) for n, c in zip([9, 1, 6, 12], [4, 3, 1, 2]))
  assert whole.segment_ids.astype(bool).sum() - flat["segment_ids"].astype(bool).sum() == saved
  for row in range(len(rows)):
    prompt, completion = rows.prompt_tokens[row], rows.completion_tokens[row]
    (line,) = np.unique(np.nonzero(flat["row_index"] == row)[0])
    on = (flat["row_index"][line] == row) & (flat["branch_ids"][line] > 0)
    branch = np.unique(flat["branch_ids"][line][on])
    segment = np.unique(flat["segment_ids"][line][on])
    assert len(branch) == 1 and len(segment) == 1
    # The context a loss slot attends to (trunk + own branch, up to itself) is the row itself.
    trunk = (flat["segment_ids"][line] == segment) & (flat["branch_ids"][line] == 0)
    context = np.flatnonzero(trunk | on)
    sequence = np.concatenate([prompt, completion])
    np.testing.assert_array_equal(flat["tokens"][line, context], sequence[:-1])
    np.testing.assert_array_equal(flat["positions"][line, context], np.arange(len(sequence) - 1))
    np.testing.assert_array_equal(flat["targets"][line, on], completion)
    np.testing.assert_array_equal(flat["loss_mask"][line, on], 1.0)
    np.testing.assert_array_equal(flat["old_logp"][line, on], rows.completion_logprobs[row])
    np.testing.assert_array_equal(flat["advantages"][line, on], rows.advantage[row])
    np.testing.assert_array_equal(flat["row_num_tokens"][line, on], len(completion))
    # Siblings: the rows with the same prompt share this trunk, on other branches.
    siblings = {r for r in range(len(rows)) if order[r] == order[row]}
    members = set(np.unique(flat["row_index"][line][(flat["segment_ids"][line] == segment)
                                                    & (flat["branch_ids"][line] > 0)]))
    assert members == siblings
  assert flat["loss_mask"].sum() == sum(len(c) for c in rows.completion_tokens)
  np.testing.assert_array_equal(flat["loss_mask"][flat["branch_ids"] == 0], 0.0)


def test_shared_prompt_group_larger_than_a_line_is_split():
  rng = np.random.default_rng(6)
  rows, _ = _shared_rows(rng, prompt_lens=[10], copies=[5], max_completion=7)
  for i in range(len(rows)):  # 6 completion tokens each: trunk 9 + 6k slots
    rows.completion_tokens[i] = rng.integers(1, 30, 6).astype(np.int32)
    rows.completion_logprobs[i] = np.zeros(6, np.float32)
  packed = packing.pack_rows(rows, packing.PackingConfig(seq_len=22, micro_batch_size=1))
  flat = _flat(packed)
  # 9 + 2 * 6 = 21 <= 22 < 27: two rows per trunk, so 3 trunks over 3 lines.
  assert flat["tokens"].shape[0] == 3
  np.testing.assert_array_equal(sorted(flat["branch_ids"].max(axis=1)), [1, 2, 2])
  assert flat["loss_mask"].sum() == 30
