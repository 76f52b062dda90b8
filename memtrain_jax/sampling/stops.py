"""When a completion ends: stop token ids and stop strings.

On the device a row stops when it samples a stop id or when its last tokens spell one of the stop
strings' token sequences (each string tokenised on its own and after a space). A string can also
appear through another tokenisation; `cut_at_stop_string` finds those on the host and cuts the
completion after the token that completes the string. Either way the stop token (or the tokens of
the stop string) stay in the completion: the policy chose to stop, and that choice is trained.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class StopSpec(NamedTuple):
  """Device-side stop conditions (plain arrays, so they are arguments of the program)."""
  ids: np.ndarray  # int32 [num_ids]
  sequences: np.ndarray  # int32 [num_seqs, width], right-aligned, -1 before the start
  # (a sequence of width w occupies the last w columns.)


def build_stop_spec(eos_ids: Sequence[int], stop_token_ids: Sequence[int],
                    stop_strings: Sequence[str], tokenizer) -> StopSpec:
  # No ids at all (a config without eos and no stop_token_ids) means every row runs to its budget.
  ids = sorted({int(i) for i in list(eos_ids) + list(stop_token_ids)})
  seqs = set()
  for text in stop_strings:
    if not text:
      raise ValueError("stop strings must be non-empty")
    for variant in (text, " " + text):
      toks = tuple(tokenizer.encode(variant, add_special_tokens=False))
      if toks:
        seqs.add(toks)
  width = max((len(s) for s in seqs), default=1)
  table = np.full((len(seqs), width), -1, np.int32)
  for row, seq in enumerate(sorted(seqs)):
    table[row, width - len(seq):] = seq
  return StopSpec(np.asarray(ids, np.int32), table)


def hits_stop(spec: StopSpec, buffer: jax.Array, index: jax.Array) -> jax.Array:
  """Whether each row's token at `buffer[:, index]` ends a stop id or sequence ([B] bool)."""
  token = jax.lax.dynamic_index_in_dim(buffer, index, axis=1, keepdims=False)
  hit = jnp.isin(token, spec.ids)
  num_seqs, width = spec.sequences.shape
  if num_seqs == 0:
    return hit
  # Columns before the completion read as -2, which matches neither a token nor the -1 filler.
  padded = jnp.pad(buffer, ((0, 0), (width - 1, 0)), constant_values=-2)
  window = jax.lax.dynamic_slice_in_dim(padded, index, width, axis=1)  # [B, width]
  seqs = jnp.asarray(spec.sequences)
  match = (window[:, None, :] == seqs[None]) | (seqs[None] == -1)
  return hit | jnp.any(jnp.all(match, axis=-1), axis=-1)


def cut_at_stop_string(tokens: np.ndarray, stop_strings: Sequence[str], tokenizer) -> int | None:
  """Length of the shortest prefix of `tokens` whose text contains a stop string, or None.

  Decoding is done O(log n) times (binary search over prefix lengths), not once per token.
  """
  if not stop_strings or len(tokens) == 0:
    return None

  def contains(n: int) -> bool:
    text = tokenizer.decode(tokens[:n].tolist(), skip_special_tokens=False)
    return any(s in text for s in stop_strings)

  if not contains(len(tokens)):
    return None
  lo, hi = 1, len(tokens)  # contains(hi) holds; find the smallest such n
  while lo < hi:
    mid = (lo + hi) // 2
    if contains(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo
