"""One interface over the tokenizers the pipeline measures lengths with.

The pipeline only needs `encode(text) -> list[int]` and `decode(ids) -> str`.
A Hugging Face tokenizer must be called without special tokens, otherwise
every passage would be counted with a BOS token it will never carry.
"""

import re
from typing import Protocol, Sequence

# Leading whitespace stays glued to the next piece (as in GPT-2 BPE), so the
# pieces concatenate back to the exact input text.
_PIECE_RE = re.compile(r'\s*\w+|\s*[^\w\s]|\s+')


class Tokenizer(Protocol):
  """What the pipeline calls on a plain (non Hugging Face) tokenizer."""

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class RegexTokenizer:
  """Word-piece tokenizer for CPU runs and tests: exact round trip, no model.

  Ids are given out in order of first appearance, so they are deterministic
  for a deterministic input order.
  """

  def __init__(self):
    self._ids: dict[str, int] = {}
    self._pieces: list[str] = []

  def encode(self, text: str) -> list[int]:
    ids = []
    for piece in _PIECE_RE.findall(text):
      piece_id = self._ids.get(piece)
      if piece_id is None:
        piece_id = len(self._pieces)
        self._ids[piece] = piece_id
        self._pieces.append(piece)
      ids.append(piece_id)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return ''.join(self._pieces[i] for i in ids)


def _is_hf_tokenizer(tokenizer) -> bool:
  try:
    from transformers import PreTrainedTokenizerBase  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return isinstance(tokenizer, PreTrainedTokenizerBase)


class TokenCounter:
  """Adapts a plain or Hugging Face tokenizer to encode/decode/count."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self._is_hf = _is_hf_tokenizer(tokenizer)

  @property
  def name(self) -> str:
    """What the stats report calls this tokenizer."""
    if self._is_hf:
      return f"{type(self.tokenizer).__name__} ({getattr(self.tokenizer, 'name_or_path', '') or 'model'})"
    return f"{type(self.tokenizer).__name__} (built-in)"

  def encode(self, text: str) -> list[int]:
    if self._is_hf:
      return list(self.tokenizer.encode(text, add_special_tokens=False))
    return list(self.tokenizer.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    if self._is_hf:
      return self.tokenizer.decode(
          list(ids), skip_special_tokens=False,
          clean_up_tokenization_spaces=False)
    return self.tokenizer.decode(list(ids))

  def count(self, text: str) -> int:
    return len(self.encode(text))


def load_data_tokenizer(path: str) -> TokenCounter:
  """Returns the built-in tokenizer for '' or the model tokenizer at `path`."""
  if not path:
    return TokenCounter(RegexTokenizer())
  try:
    from memtrain_jax.models import load_tokenizer  # pylint: disable=g-import-not-at-top
  except ImportError:
    load_tokenizer = None
  if load_tokenizer is not None:
    return TokenCounter(load_tokenizer(path))
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return TokenCounter(AutoTokenizer.from_pretrained(path))
