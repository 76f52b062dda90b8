"""Packs ragged interaction rows into fixed-shape micro-batches for the loss.

A row is `prompt + completion` (the stop token is the completion's last token). In a packed line a
row takes `len(prompt) + len(completion) - 1` slots: the input at slot t is token t and the target
is token t+1, so the last completion token is only ever a target. Completion token k (sequence
index P+k) is predicted at slot P+k-1; those slots carry `loss_mask`, `old_logp` (the rollout
log-prob of completion token k) and the row's advantage.

Masks come from row lengths only, never from comparing tokens with a pad id: the pad id may equal the
stop token, which must be trained.

Rows go into lines by first-fit-decreasing; lines are grouped `micro_batch_size` at a time, and the
number of micro-batches is padded up to a multiple of `num_micro_batches_multiple` so that few
distinct shapes are ever compiled.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memtrain_jax.agent.rows import InteractionRows


@dataclasses.dataclass(frozen=True)
class PackingConfig:
  """Shapes of packed micro-batches.

  Attributes:
    seq_len: slots per packed line; every row needs prompt_len + completion_len - 1 <= seq_len.
    micro_batch_size: lines per micro-batch.
    num_micro_batches_multiple: the number of micro-batches is padded up to a multiple of this.
    pad_id: token written into padding slots (inputs and targets); never used to build masks.
  """
  seq_len: int
  micro_batch_size: int
  num_micro_batches_multiple: int = 1
  pad_id: int = 0


@dataclasses.dataclass
class PackedBatch:
  """Packed micro-batches; every array is [num_micro_batches, micro_batch_size, seq_len].

  Attributes:
    tokens: int32 model inputs.
    targets: int32 next tokens (pad_id where there is none).
    positions: int32 position of each slot within its row, restarting at 0; 0 on padding.
    segment_ids: int32 1..n for the rows of a line, 0 on padding.
    loss_mask: float32 1 on slots that predict a completion token.
    old_logp: float32 rollout log-prob of the target on loss slots, 0 elsewhere.
    advantages: float32 the row's advantage on loss slots, 0 elsewhere.
    row_num_tokens: int32 number of loss slots of the slot's row (the completion length), 0 on padding.
    row_index: int32 index of the slot's row in the packed `InteractionRows`, -1 on padding.
  """
  tokens: np.ndarray
  targets: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  loss_mask: np.ndarray
  old_logp: np.ndarray
  advantages: np.ndarray
  row_num_tokens: np.ndarray
  row_index: np.ndarray

  @property
  def num_micro_batches(self) -> int:
    return self.tokens.shape[0]

  def as_dict(self) -> dict[str, np.ndarray]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def micro_batch(self, index: int) -> dict[str, np.ndarray]:
    return {name: value[index] for name, value in self.as_dict().items()}


def packed_length(prompt_len: int, completion_len: int) -> int:
  """Slots a row takes in a packed line (its last token is only a target)."""
  return prompt_len + completion_len - 1


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
  """Assigns items to bins of `capacity` by first-fit-decreasing.

  Args:
    lengths: [n] item sizes, each <= capacity.
    capacity: bin size.

  Returns:
    For each bin, the indices of its items, in placement order. Ties in length keep input order,
    so the result is deterministic.
  """
  order = np.argsort(-np.asarray(lengths), kind="stable")
  remaining = np.zeros((0,), np.int64)
  bins: list[list[int]] = []
  for item in order:
    size = int(lengths[item])
    fits = np.flatnonzero(remaining >= size)
    if fits.size:
      target = int(fits[0])
    else:
      target = len(bins)
      bins.append([])
      remaining = np.append(remaining, capacity)
    bins[target].append(int(item))
    remaining[target] -= size
  return bins


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def pack_rows(rows: InteractionRows, config: PackingConfig) -> PackedBatch:
  """Packs rows (with advantages filled) into fixed-shape micro-batches.

  Args:
    rows: rows to train on; `rows.advantage` must be set (see `rl.advantages.fill_advantages`).
    config: packing shapes.

  Returns:
    The packed batch; every row's loss slots appear exactly once.

  Raises:
    ValueError: a row is empty on one side or longer than `seq_len`, or advantages are missing.
  """
  rows.validate()
  if rows.advantage is None:
    raise ValueError("rows.advantage is None: fill it with rl.advantages.fill_advantages first")
  if config.micro_batch_size < 1 or config.num_micro_batches_multiple < 1 or config.seq_len < 1:
    raise ValueError(f"invalid packing config {config}")
  prompt_lens = np.array([len(p) for p in rows.prompt_tokens], np.int64)
  completion_lens = np.array([len(c) for c in rows.completion_tokens], np.int64)
  for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
    # The first completion token is predicted from the last prompt slot, so both sides are needed.
    if p < 1 or c < 1:
      raise ValueError(f"row {i} (sample {rows.sample_id[i]}) has prompt length {p} and completion "
                       f"length {c}; both must be >= 1")
    need = packed_length(int(p), int(c))
    if need > config.seq_len:
      raise ValueError(
          f"row {i} (sample {rows.sample_id[i]}, kind {int(rows.kind[i])}, step {rows.step[i]}) needs "
          f"{need} slots (prompt {p} + completion {c} - 1) but PackingConfig.seq_len is "
          f"{config.seq_len}; raise PackingConfig.seq_len to at least {need}")
  lengths = prompt_lens + completion_lens - 1
  lines = first_fit_decreasing(lengths, config.seq_len)
  num_micro = _round_up(max(_round_up(len(lines), config.micro_batch_size) // config.micro_batch_size, 1),
                        config.num_micro_batches_multiple)
  shape = (num_micro * config.micro_batch_size, config.seq_len)

  tokens = np.full(shape, config.pad_id, np.int32)
  targets = np.full(shape, config.pad_id, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  loss_mask = np.zeros(shape, np.float32)
  old_logp = np.zeros(shape, np.float32)
  advantages = np.zeros(shape, np.float32)
  row_num_tokens = np.zeros(shape, np.int32)
  row_index = np.full(shape, -1, np.int32)

  for line, members in enumerate(lines):
    start = 0
    for segment, row in enumerate(members, start=1):
      prompt_len, completion_len = int(prompt_lens[row]), int(completion_lens[row])
      sequence = np.concatenate([rows.prompt_tokens[row], rows.completion_tokens[row]]).astype(np.int32)
      n = len(sequence) - 1
      span = slice(start, start + n)
      tokens[line, span] = sequence[:-1]
      targets[line, span] = sequence[1:]
      positions[line, span] = np.arange(n, dtype=np.int32)
      segment_ids[line, span] = segment
      row_num_tokens[line, span] = completion_len
      row_index[line, span] = row
      # Slots P-1 .. P+C-2 of the row predict completion tokens 0 .. C-1.
      loss_span = slice(start + prompt_len - 1, start + n)
      loss_mask[line, loss_span] = 1.0
      old_logp[line, loss_span] = rows.completion_logprobs[row]
      advantages[line, loss_span] = rows.advantage[row]
      start += n

  packed = PackedBatch(tokens=tokens, targets=targets, positions=positions, segment_ids=segment_ids,
                       loss_mask=loss_mask, old_logp=old_logp, advantages=advantages,
                       row_num_tokens=row_num_tokens, row_index=row_index)
  return _reshape_micro(packed, num_micro)


def _reshape_micro(packed: PackedBatch, num_micro: int) -> PackedBatch:
  return PackedBatch(**{name: value.reshape(num_micro, -1, value.shape[-1])
                        for name, value in packed.as_dict().items()})


def pad_num_micro_batches(packed: PackedBatch, multiple: int, pad_id: int = 0) -> PackedBatch:
  """Appends all-padding micro-batches so that their number is a multiple of `multiple`.

  Use it with the data-parallel size when micro-batches are split across replicas. Padding
  micro-batches have an empty loss mask, so they add 0 to every numerator and denominator.
  """
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  extra = _round_up(packed.num_micro_batches, multiple) - packed.num_micro_batches
  if extra == 0:
    return packed
  fill = {"tokens": pad_id, "targets": pad_id, "row_index": -1}
  padded = {}
  for name, value in packed.as_dict().items():
    pad = np.full((extra,) + value.shape[1:], fill.get(name, 0), value.dtype)
    padded[name] = np.concatenate([value, pad])
  return PackedBatch(**padded)
