"""Packs ragged interaction rows into fixed-shape micro-batches for the loss.

A row is `prompt + completion` (the stop token is the completion's last token). In a packed line a
row takes `len(prompt) + len(completion) - 1` slots: the input at slot t is token t and the target
is token t+1, so the last completion token is only ever a target. Completion token k (sequence
index P+k) is predicted at slot P+k-1; those slots carry `loss_mask`, `old_logp` (the rollout
log-prob of completion token k) and the row's advantage.

Masks come from row lengths only, never from comparing tokens with a pad id: the pad id may equal the
stop token, which must be trained.

Shared prompts. Rows with the same prompt tokens (the G1 rollouts' first memory update of a
document, the G2 answers to one recall probe) are packed as one prefix tree: the prompt's first
P-1 tokens once (the trunk, branch 0), then one branch per row holding the last prompt token and
the row's completion but its stop token (branch 1, 2, ...). A branch attends to the trunk and to
itself, never to a sibling (`branch_ids`, read by `decoder.forward_hidden`), and its positions
continue from the trunk's, so every loss slot sees exactly the context it would see alone: the
log-probs and the gradient are those of unshared rows, for P-1 fewer slots per extra row. The last
prompt token is repeated in each branch because the slot that holds it predicts the completion's
first token, which differs between rows.

Items (a prompt group, or the part of one that fits a line) go into lines by
first-fit-decreasing; lines are grouped `micro_batch_size` at a time, and the number of
micro-batches is padded up to a multiple of `num_micro_batches_multiple` so that few distinct
shapes are ever compiled.
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
    share_prompts: pack rows with identical prompts as one prefix tree (see the module docstring).
  """
  seq_len: int
  micro_batch_size: int
  num_micro_batches_multiple: int = 1
  pad_id: int = 0
  share_prompts: bool = True


@dataclasses.dataclass
class PackedBatch:
  """Packed micro-batches; every array is [num_micro_batches, micro_batch_size, seq_len].

  Attributes:
    tokens: int32 model inputs.
    targets: int32 next tokens (pad_id where there is none).
    positions: int32 position of each slot within its row, restarting at 0; 0 on padding.
    segment_ids: int32 1..n for the items (rows, or prompt groups) of a line, 0 on padding.
    branch_ids: int32 0 on a shared prompt's trunk and on padding, 1..k on the k rows that share it
      (a row alone is a trunk and branch 1).
    loss_mask: float32 1 on slots that predict a completion token.
    old_logp: float32 rollout log-prob of the target on loss slots, 0 elsewhere.
    advantages: float32 the row's advantage on loss slots, 0 elsewhere.
    row_num_tokens: int32 number of loss slots of the slot's row (the completion length), 0 on padding
      and on a trunk.
    row_index: int32 index of the slot's row in the packed `InteractionRows` (on a trunk: its first
      row), -1 on padding.
  """
  tokens: np.ndarray
  targets: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  branch_ids: np.ndarray
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


def prompt_groups(rows: InteractionRows, share_prompts: bool = True) -> list[list[int]]:
  """Row indices grouped by identical prompt tokens, in order of first appearance."""
  if not share_prompts:
    return [[i] for i in range(len(rows))]
  groups: dict[bytes, list[int]] = {}
  for i, prompt in enumerate(rows.prompt_tokens):
    groups.setdefault(np.asarray(prompt, np.int32).tobytes(), []).append(i)
  return list(groups.values())


def _split_to_fit(members: list[int], trunk: int, completion_lens: np.ndarray,
                  seq_len: int) -> list[list[int]]:
  """Splits a prompt group into items of at most `seq_len` slots (trunk + branches), in order."""
  items, current, used = [], [], trunk
  for row in members:
    need = int(completion_lens[row])
    if current and used + need > seq_len:
      items.append(current)
      current, used = [], trunk
    current.append(row)
    used += need
  items.append(current)
  return items


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
  # An item is a trunk (the prompt but its last token) and one branch per row (the last prompt
  # token + the completion but its stop token): P - 1 + sum(C) slots.
  items = [item for group in prompt_groups(rows, config.share_prompts)
           for item in _split_to_fit(group, int(prompt_lens[group[0]]) - 1, completion_lens,
                                     config.seq_len)]
  lengths = np.array([prompt_lens[item[0]] - 1 + completion_lens[item].sum() for item in items],
                     np.int64)
  lines = first_fit_decreasing(lengths, config.seq_len)
  num_micro = _round_up(max(_round_up(len(lines), config.micro_batch_size) // config.micro_batch_size, 1),
                        config.num_micro_batches_multiple)
  shape = (num_micro * config.micro_batch_size, config.seq_len)

  tokens = np.full(shape, config.pad_id, np.int32)
  targets = np.full(shape, config.pad_id, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  branch_ids = np.zeros(shape, np.int32)
  loss_mask = np.zeros(shape, np.float32)
  old_logp = np.zeros(shape, np.float32)
  advantages = np.zeros(shape, np.float32)
  row_num_tokens = np.zeros(shape, np.int32)
  row_index = np.full(shape, -1, np.int32)

  for line, members in enumerate(lines):
    start = 0
    for segment, item_index in enumerate(members, start=1):
      item = items[item_index]
      prompt = np.asarray(rows.prompt_tokens[item[0]], np.int32)
      trunk = len(prompt) - 1
      span = slice(start, start + trunk)
      tokens[line, span] = prompt[:-1]
      targets[line, span] = prompt[1:]
      positions[line, span] = np.arange(trunk, dtype=np.int32)
      segment_ids[line, span] = segment
      row_index[line, span] = item[0]
      start += trunk
      for branch, row in enumerate(item, start=1):
        completion = np.asarray(rows.completion_tokens[row], np.int32)
        n = len(completion)
        # Slot k of the branch holds sequence token P-1+k and predicts completion token k.
        span = slice(start, start + n)
        tokens[line, span] = np.concatenate([prompt[-1:], completion[:-1]])
        targets[line, span] = completion
        positions[line, span] = np.arange(trunk, trunk + n, dtype=np.int32)
        segment_ids[line, span] = segment
        branch_ids[line, span] = branch
        row_num_tokens[line, span] = n
        row_index[line, span] = row
        loss_mask[line, span] = 1.0
        old_logp[line, span] = rows.completion_logprobs[row]
        advantages[line, span] = rows.advantage[row]
        start += n

  packed = PackedBatch(tokens=tokens, targets=targets, positions=positions, segment_ids=segment_ids,
                       branch_ids=branch_ids, loss_mask=loss_mask, old_logp=old_logp,
                       advantages=advantages, row_num_tokens=row_num_tokens, row_index=row_index)
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
