"""Splits articles into passages of a bounded number of words.

The paper does not give its passage granularity (§9 NOT FOUND). Passages here
are paragraphs: short neighbours are merged up to `min_words`, long ones are
split at sentence ends (or at words, for a run-on sentence) to `max_words`.
"""

import dataclasses
import re

from memtrain_jax.data.skips import SkipLog

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket)
# and whitespace, before an upper-case letter, digit or opening quote.
_SENTENCE_END_RE = re.compile(r'(?<=[.!?])["\')\]]?\s+(?=["\'(\[]?[A-Z0-9])')


@dataclasses.dataclass(frozen=True)
class Passage:
  title: str
  text: str
  article_index: int
  passage_index: int


def split_sentences(text: str) -> list[str]:
  sentences = []
  start = 0
  for match in _SENTENCE_END_RE.finditer(text):
    sentences.append(text[start:match.start()] + match.group(0).strip())
    start = match.end()
  sentences.append(text[start:])
  return [s.strip() for s in sentences if s.strip()]


def _word_count(text: str) -> int:
  return len(text.split())


def _split_long(paragraph: str, max_words: int) -> list[str]:
  """Splits a paragraph into pieces of at most `max_words` words."""
  pieces, current, current_words = [], [], 0
  for sentence in split_sentences(paragraph):
    words = sentence.split()
    # A run-on sentence longer than max_words is cut at word boundaries.
    sentence_parts = [
        ' '.join(words[i:i + max_words])
        for i in range(0, len(words), max_words)
    ]
    for part in sentence_parts:
      part_words = _word_count(part)
      if current and current_words + part_words > max_words:
        pieces.append(' '.join(current))
        current, current_words = [], 0
      current.append(part)
      current_words += part_words
  if current:
    pieces.append(' '.join(current))
  return pieces


def segment_text(text: str, min_words: int, max_words: int) -> list[str]:
  """Returns passages of `text` (paragraphs split by newlines)."""
  pieces = []
  for paragraph in text.split('\n'):
    paragraph = ' '.join(paragraph.split())
    if paragraph:
      pieces.extend(_split_long(paragraph, max_words))
  passages, current, current_words = [], [], 0
  for piece in pieces:
    piece_words = _word_count(piece)
    if current and current_words + piece_words > max_words:
      passages.append(' '.join(current))
      current, current_words = [], 0
    current.append(piece)
    current_words += piece_words
    if current_words >= min_words:
      passages.append(' '.join(current))
      current, current_words = [], 0
  if current:
    # A short tail joins the previous passage when that stays in range.
    if passages and _word_count(passages[-1]) + current_words <= max_words:
      passages[-1] = passages[-1] + ' ' + ' '.join(current)
    else:
      passages.append(' '.join(current))
  return passages


def segment_articles(records, min_words: int, max_words: int,
                     skips: SkipLog) -> list[Passage]:
  """Segments every article; skips empty and one-sentence articles."""
  passages = []
  for article_index, record in enumerate(records):
    text = record['text']
    if not text.strip():
      skips.skip('empty_text', record['title'])
      continue
    if len(split_sentences(' '.join(text.split()))) < 2:
      skips.skip('one_sentence', record['title'])
      continue
    for passage_index, passage in enumerate(
        segment_text(text, min_words, max_words)):
      passages.append(
          Passage(record['title'], passage, article_index, passage_index))
  return passages
