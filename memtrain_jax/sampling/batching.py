"""Host-side planning: which rows run together, padded to which shapes.

Prompt lengths are padded up to a bucket and batches up to a batch bucket, so a whole training
step needs only a few distinct program shapes. Rows that continue the same prompt (the n samples
of one prompt, or identical prompts) share one prefill. Which rows run together is the cheapest
cut of the bucket-ordered rows, padding against decode loops (`plan_microbatches`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def pick_bucket(size: int, buckets: Sequence[int], multiple: int = 1) -> int:
  """The smallest bucket >= size that is a multiple of `multiple` (the batch shards)."""
  for bucket in sorted(buckets):
    if bucket >= size and bucket % multiple == 0:
      return bucket
  raise ValueError(
      f"size {size} fits no bucket of {tuple(buckets)} (that is also a multiple of {multiple}); "
      "add a larger bucket")


def max_rows(batch_buckets: Sequence[int], multiple: int) -> int:
  fitting = [b for b in batch_buckets if b % multiple == 0]
  if not fitting:
    raise ValueError(
        f"no batch bucket of {tuple(batch_buckets)} is a multiple of the {multiple} batch shards "
        "of the mesh; add one")
  return max(fitting)


@dataclasses.dataclass
class MicroBatch:
  prompt_bucket: int
  unique_prompts: list[int]  # indices into the caller's prompt list, one prefill each
  row_source: list[int]  # per output row: position in unique_prompts
  out_rows: list[int]  # per output row: its index in the caller's prompt-major output


def plan_microbatches(prompt_lengths: Sequence[int], prompt_keys: Sequence[bytes] | None,
                      num_samples: int, prompt_buckets: Sequence[int], rows_per_batch: int, *,
                      batch_buckets: Sequence[int] | None = None, batch_multiple: int = 1,
                      decode_loop_tokens: int = 0) -> list[MicroBatch]:
  """Splits the prompt-major output rows into micro-batches, each padded to one prompt bucket.

  Every micro-batch is a prefill and a decode loop. The plan minimises their estimated cost in
  prompt tokens: each micro-batch's prefill (its distinct prompts, padded up to a batch bucket,
  times its prompt bucket: the largest of its rows) plus `decode_loop_tokens` for its decode loop.
  A decode step reads every weight to make one token per row, so on any hardware it costs about as
  much as prefilling tens to hundreds of prompt tokens. So a few rows of a smaller bucket join a
  micro-batch of longer prompts, padded up, rather than paying for a decode loop of their own,
  while a remainder that would pad the prefill by many rows of a long bucket runs apart. With
  `decode_loop_tokens=0` only padding counts.

  Rows are ordered by prompt bucket, then by shared prefill, and the plan cuts that order into
  runs of at most `rows_per_batch` rows, chosen by dynamic programming over the cut points.

  Args:
    prompt_lengths: tokens per prompt.
    prompt_keys: a hashable content key per prompt for sharing prefills between identical
      prompts, or None to prefill every row on its own (prefix sharing off).
    num_samples: output rows per prompt; row r continues prompt r // num_samples.
    prompt_buckets: allowed padded prompt lengths.
    rows_per_batch: most output rows in one micro-batch.
    batch_buckets: the padded numbers of prefill rows (None: no padding).
    batch_multiple: prefill rows are padded to a batch bucket that is a multiple of this.
    decode_loop_tokens: what one decode loop costs, in prompt tokens of prefill.
  """
  num_rows = len(prompt_lengths) * num_samples
  if num_rows == 0:
    return []
  if prompt_keys is None:
    share = list(range(num_rows))  # every row is its own prefill
  else:
    first_with_key: dict[bytes, int] = {}
    share = [first_with_key.setdefault(prompt_keys[r // num_samples], r // num_samples)
             for r in range(num_rows)]
  buckets = [pick_bucket(prompt_lengths[r // num_samples], prompt_buckets) for r in range(num_rows)]
  # Stable order by bucket then by shared prefill, so the rows of one prefill stay together.
  order = sorted(range(num_rows), key=lambda r: (buckets[r], share[r], r))
  ordered_buckets = np.asarray([buckets[r] for r in order], np.float64)
  # new_prefill[k] = 1 where order[k]'s shared prefill differs from order[k-1]'s: inside a run such
  # a row adds one prefill (and a run's first row adds one whatever it is).
  ordered_share = np.asarray([share[r] for r in order])
  new_prefill = np.concatenate([[1], (ordered_share[1:] != ordered_share[:-1]).astype(np.int64)])
  prefills_before = np.concatenate([[0], np.cumsum(new_prefill)])  # prefills in order[:k]
  if batch_buckets is None:
    padded_rows = np.arange(rows_per_batch + 1, dtype=np.float64)
  else:
    padded_rows = np.asarray([0] + [pick_bucket(n, batch_buckets, batch_multiple)
                                    for n in range(1, rows_per_batch + 1)], np.float64)
  # best[j]: the cheapest plan of order[:j] as cost * (num_rows + 1) + its number of micro-batches,
  # so that of equally cheap plans the one with fewer micro-batches wins (the costs are whole
  # numbers, so this is exact in float64). cut[j]: where that plan's last micro-batch starts.
  scale = float(num_rows + 1)
  best = np.full((num_rows + 1,), np.inf)
  best[0] = 0.0
  cut = np.zeros((num_rows + 1,), np.int64)
  for j in range(1, num_rows + 1):
    starts = np.arange(max(0, j - rows_per_batch), j)
    # Prefills of the run order[i:j]: its first row always starts one.
    prefills = prefills_before[j] - prefills_before[starts] - new_prefill[starts] + 1
    cost = padded_rows[prefills] * ordered_buckets[j - 1] + int(decode_loop_tokens)
    key = best[starts] + cost * scale + 1.0
    # Remaining ties go to the shortest last micro-batch, so the earlier ones are the full ones.
    k = len(key) - 1 - int(np.argmin(key[::-1]))
    best[j], cut[j] = key[k], starts[k]
  bounds = []
  j = num_rows
  while j > 0:
    bounds.append((int(cut[j]), j))
    j = int(cut[j])
  batches: list[MicroBatch] = []
  for i, j in reversed(bounds):
    batch = MicroBatch(buckets[order[j - 1]], [], [], [])
    last_key = None  # the shared-prefill key of the newest unique prompt in this batch
    for r in order[i:j]:
      if share[r] != last_key:  # rows of one key are contiguous in `order`
        batch.unique_prompts.append(r // num_samples)
        last_key = share[r]
      batch.row_source.append(len(batch.unique_prompts) - 1)
      batch.out_rows.append(r)
    batches.append(batch)
  return batches


def left_pad(prompts: Sequence[np.ndarray], length: int, rows: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """[rows, length] left-padded tokens and each row's first real slot.

  Rows beyond the prompts are padding rows: one pad token each, so attention never sees an
  empty row.
  """
  tokens = np.full((rows, length), pad_id, np.int32)
  start = np.full((rows,), length - 1, np.int32)
  for i, prompt in enumerate(prompts):
    tokens[i, length - len(prompt):] = prompt
    start[i] = length - len(prompt)
  return tokens, start
