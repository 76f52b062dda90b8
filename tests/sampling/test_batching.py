"""Micro-batch planning: every row placed once, and the cheapest cut of the bucket order."""

import itertools

import numpy as np
import pytest

from memtrain_jax.sampling import batching

BATCH_BUCKETS = (1, 2, 4, 8)


def _plan_cost(plan, decode_loop_tokens, batch_buckets=BATCH_BUCKETS):
  """What the planner minimises, recomputed from its output."""
  return sum(batching.pick_bucket(len(m.unique_prompts), batch_buckets) * m.prompt_bucket
             + decode_loop_tokens for m in plan)


def _check_valid(plan, lengths, keys, num_samples, rows_per_batch):
  rows = sorted(r for m in plan for r in m.out_rows)
  assert rows == list(range(len(lengths) * num_samples))  # every row exactly once
  for m in plan:
    assert len(m.out_rows) <= rows_per_batch
    assert len(m.row_source) == len(m.out_rows)
    for r, src in zip(m.out_rows, m.row_source):
      prompt = m.unique_prompts[src]
      # The row continues a prompt with its own content, padded to a bucket that holds it.
      assert keys[prompt] == keys[r // num_samples]
      assert lengths[r // num_samples] <= m.prompt_bucket
    # One prefill per distinct prompt within a micro-batch.
    assert len({keys[p] for p in m.unique_prompts}) == len(m.unique_prompts)


def _brute_force_cost(lengths, keys, num_samples, buckets, rows_per_batch, decode_loop_tokens):
  """(cost, micro-batches) of the cheapest cut of the (bucket, shared prompt, row) order into
  runs, the fewest micro-batches among equally cheap ones, by enumeration."""
  n = len(lengths) * num_samples
  first = {}
  share = [first.setdefault(keys[r // num_samples], r // num_samples) for r in range(n)]
  bucket = [batching.pick_bucket(lengths[r // num_samples], buckets) for r in range(n)]
  order = sorted(range(n), key=lambda r: (bucket[r], share[r], r))
  best = (np.inf, 0)
  for cuts in itertools.product([0, 1], repeat=n - 1):
    bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
    runs = [order[a:b] for a, b in zip(bounds, bounds[1:])]
    if any(len(run) > rows_per_batch for run in runs):
      continue
    cost = sum(batching.pick_bucket(len({share[r] for r in run}), BATCH_BUCKETS)
               * max(bucket[r] for r in run) + decode_loop_tokens for run in runs)
    best = min(best, (cost, len(runs)))
  return best


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_the_cheapest_cut_and_places_every_row_once(seed):
  rng = np.random.default_rng(seed)
  num_prompts = int(rng.integers(1, 7))
  num_samples = int(rng.integers(1, 3))
  lengths = [int(x) for x in rng.integers(1, 64, num_prompts)]
  # Some prompts repeat (shared prefills), some do not.
  keys = [bytes([int(k)]) for k in rng.integers(0, 5, num_prompts)]
  lengths = [lengths[keys.index(k)] for k in keys]  # equal content, equal length
  buckets = (8, 16, 32, 64)
  rows_per_batch = int(rng.integers(1, 9))
  decode = int(rng.choice([0, 8, 40, 1000]))
  plan = batching.plan_microbatches(lengths, keys, num_samples, buckets, rows_per_batch,
                                    batch_buckets=BATCH_BUCKETS, decode_loop_tokens=decode)
  _check_valid(plan, lengths, keys, num_samples, rows_per_batch)
  assert (_plan_cost(plan, decode), len(plan)) == _brute_force_cost(lengths, keys, num_samples, buckets,
                                                       rows_per_batch, decode)


def test_a_few_longer_prompts_join_the_batch_instead_of_a_decode_loop_of_their_own():
  # The memory agent's case: three memory-step prompts in the 384 bucket and one that just
  # spills into 448. A separate micro-batch would run a second 32-step decode loop.
  lengths, keys = [380, 381, 383, 385], [b"a", b"b", b"c", b"d"]
  buckets = (256, 384, 448, 512)
  merged = batching.plan_microbatches(lengths, keys, 1, buckets, 8, batch_buckets=BATCH_BUCKETS,
                                      decode_loop_tokens=64 * 32)
  assert [(m.prompt_bucket, len(m.out_rows)) for m in merged] == [(448, 4)]
  # When decode loops cost nothing, no prompt is padded past its own bucket.
  split = batching.plan_microbatches(lengths, keys, 1, buckets, 8, batch_buckets=BATCH_BUCKETS,
                                     decode_loop_tokens=0)
  assert len(split) > 1
  for m in split:
    assert all(batching.pick_bucket(lengths[r], buckets) == m.prompt_bucket for r in m.out_rows)


def test_a_short_prompt_is_not_padded_far_beyond_what_a_decode_loop_costs():
  lengths, keys = [100, 8000, 8000, 8000], [b"s", b"x", b"y", b"z"]
  buckets = (128, 8192)
  cheap_loop = batching.plan_microbatches(lengths, keys, 1, buckets, 8,
                                          batch_buckets=BATCH_BUCKETS, decode_loop_tokens=1024)
  short = [m for m in cheap_loop if 0 in m.out_rows]
  assert [(m.prompt_bucket, m.out_rows) for m in short] == [(128, [0])]
  # Three long prompts pad to four prefill rows; with a dear decode loop the short one takes the
  # padding row rather than a loop of its own, and the long ones are not split to avoid padding.
  dear_loop = batching.plan_microbatches(lengths, keys, 1, buckets, 8,
                                         batch_buckets=BATCH_BUCKETS, decode_loop_tokens=50_000)
  assert [(m.prompt_bucket, len(m.out_rows)) for m in dear_loop] == [(8192, 4)]


def test_samples_of_one_prompt_share_one_prefill_and_fill_batches_in_order():
  plan = batching.plan_microbatches([10, 10], [b"p", b"p"], 3, (16,), 4,
                                    batch_buckets=BATCH_BUCKETS, decode_loop_tokens=100)
  # Six rows of one prompt: two micro-batches (rows_per_batch 4), one prefill each.
  assert [m.out_rows for m in plan] == [[0, 1, 2, 3], [4, 5]]
  assert [len(m.unique_prompts) for m in plan] == [1, 1]
  assert plan[0].row_source == [0, 0, 0, 0]


def test_no_prompts_plan_nothing():
  assert batching.plan_microbatches([], [], 2, (16,), 4) == []
