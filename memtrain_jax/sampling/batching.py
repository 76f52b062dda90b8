"""Host-side planning: which rows run together, padded to which shapes.

Prompt lengths are padded up to a bucket and batches up to a batch bucket, so a whole training
step needs only a few distinct program shapes. Rows that continue the same prompt (the n samples
of one prompt, or identical prompts) share one prefill.
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
                      num_samples: int, prompt_buckets: Sequence[int], rows_per_batch: int
                      ) -> list[MicroBatch]:
  """Splits the prompt-major output rows into micro-batches of one prompt bucket each.

  Args:
    prompt_lengths: tokens per prompt.
    prompt_keys: a hashable content key per prompt for sharing prefills between identical
      prompts, or None to prefill every row on its own (prefix sharing off).
    num_samples: output rows per prompt; row r continues prompt r // num_samples.
    prompt_buckets: allowed padded prompt lengths.
    rows_per_batch: most output rows in one micro-batch.
  """
  num_rows = len(prompt_lengths) * num_samples
  if prompt_keys is None:
    share = list(range(num_rows))  # every row is its own prefill
  else:
    first_with_key: dict[bytes, int] = {}
    share = [first_with_key.setdefault(prompt_keys[r // num_samples], r // num_samples)
             for r in range(num_rows)]
  buckets = [pick_bucket(prompt_lengths[r // num_samples], prompt_buckets) for r in range(num_rows)]
  # Stable order by bucket then by shared prefill, so the rows of one prefill stay together.
  order = sorted(range(num_rows), key=lambda r: (buckets[r], share[r], r))
  batches: list[MicroBatch] = []
  last_key = None  # the shared-prefill key of the newest unique prompt in batches[-1]
  for r in order:
    if (not batches or batches[-1].prompt_bucket != buckets[r]
        or len(batches[-1].out_rows) >= rows_per_batch):
      batches.append(MicroBatch(buckets[r], [], [], []))
      last_key = None
    batch = batches[-1]
    if share[r] != last_key:  # rows of one key are contiguous in `order`
      batch.unique_prompts.append(r // num_samples)
      last_key = share[r]
    batch.row_source.append(len(batch.unique_prompts) - 1)
    batch.out_rows.append(r)
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
