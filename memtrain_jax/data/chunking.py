"""Splits a document into chunks of at most `chunk_size` model tokens.

Boundaries are chosen in token space, moved back (a few tokens at most) to a
token that starts a new word, so no word and no `[MASK]` is cut in two, and a
cut word cannot turn e.g. "Billy" into a visible answer "Bill". The text of a
chunk is the decoded token slice, re-encoded to check it still fits: a BPE
tokenizer can merge differently at a new boundary.
"""

import dataclasses

from memtrain_jax.data.tokens import TokenCounter


@dataclasses.dataclass(frozen=True)
class Chunk:
  text: str
  start_token: int
  num_tokens: int


def _starts_word(counter: TokenCounter, token_id: int) -> bool:
  piece = counter.decode([token_id])
  return bool(piece) and piece[0].isspace()


def _word_start_end(counter: TokenCounter, ids: list[int], start: int,
                    end: int, backoff: int) -> int:
  """Latest token index in (start, end] that begins a word, else `end`."""
  for candidate in range(end, max(start, end - backoff), -1):
    if _starts_word(counter, ids[candidate]):
      return candidate
  return end


def chunk_document(text: str, counter: TokenCounter, chunk_size: int,
                   boundary_backoff_tokens: int = 16) -> list[Chunk]:
  """Returns the chunks of `text`; each re-encodes to <= chunk_size tokens."""
  if chunk_size < 1:
    raise ValueError('chunk_size must be positive')
  ids = counter.encode(text)
  chunks, start = [], 0
  while start < len(ids):
    end = min(start + chunk_size, len(ids))
    if end < len(ids):
      end = _word_start_end(counter, ids, start, end, boundary_backoff_tokens)
    chunk_text = counter.decode(ids[start:end])
    while end - start > 1 and counter.count(chunk_text) > chunk_size:
      end -= 1
      chunk_text = counter.decode(ids[start:end])
    chunks.append(Chunk(chunk_text, start, end - start))
    start = end
  return chunks
