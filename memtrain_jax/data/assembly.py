"""Assembles one masked long document around a pivot passage (paper §2).

pivot + top-n1 related passages + random passages, up to N passages and a
token budget, shuffled; one entity of the pivot becomes the answer and every
occurrence of it in the whole document becomes `[MASK]`.
"""

import dataclasses
from typing import Callable, Sequence

import numpy as np

from memtrain_jax.data import masking
from memtrain_jax.data.entities import Entity
from memtrain_jax.data.entities import is_usable_entity
from memtrain_jax.data.entities import unique_entities
from memtrain_jax.data.passages import Passage
from memtrain_jax.data.retrieval import PassageIndex

# Random draws allowed per missing random passage before giving up; keeps the
# cost bounded on huge corpora without building a full permutation.
_DRAWS_PER_PASSAGE = 4


class AssemblyError(Exception):
  """A pivot that yields no valid document; `reason` is the skip reason."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@dataclasses.dataclass
class Document:
  pivot: int
  passage_ids: list[int]
  text: str
  num_tokens: int
  answer: Entity
  aliases: list[str]
  num_masks: int
  num_related: int


def select_passages(pivot: int, index: PassageIndex, rng: np.random.Generator,
                    count_tokens: Callable[[int], int], num_related: int,
                    num_passages: int, max_tokens: int,
                    exclude_pivot_article: bool) -> tuple[list[int], int]:
  """Returns (passage ids: pivot, related, random; how many are related)."""
  chosen, total = [pivot], count_tokens(pivot)
  taken = {pivot}
  for passage in index.related(pivot, num_related, exclude_pivot_article):
    if total + count_tokens(passage) <= max_tokens:
      chosen.append(passage)
      taken.add(passage)
      total += count_tokens(passage)
  num_related_kept = len(chosen) - 1
  missing = num_passages - len(chosen)
  for _ in range(_DRAWS_PER_PASSAGE * max(missing, 0)):
    if len(chosen) >= num_passages:
      break
    passage = int(rng.integers(len(index)))
    if passage in taken:
      continue
    taken.add(passage)
    if total + count_tokens(passage) <= max_tokens:
      chosen.append(passage)
      total += count_tokens(passage)
  return chosen, num_related_kept


def answer_candidates(pivot_entities: Sequence[Entity],
                      allowed_types: Sequence[str], min_chars: int,
                      max_words: int) -> list[Entity]:
  """Distinct pivot entities that pass the filters and can be masked."""
  usable = [
      e for e in pivot_entities
      if is_usable_entity(e, allowed_types, min_chars, max_words)
      and masking.is_maskable(e.text)
  ]
  return unique_entities(usable)


def surface_aliases(text: str, answer: str) -> list[str]:
  """Distinct spellings of the answer found in the unmasked document."""
  forms = {
      ' '.join(text[s:e].split())
      for s, e in masking.find_occurrences(text, answer)
  }
  forms.discard(' '.join(answer.split()))
  return sorted(forms)


def assemble_document(pivot: int, passages: Sequence[Passage],
                      passage_ids: list[int], num_related: int,
                      candidates: Sequence[Entity], rng: np.random.Generator,
                      count_text_tokens: Callable[[str], int],
                      min_tokens: int, max_tokens: int,
                      separator: str) -> Document:
  """Shuffles, masks and trims one document; raises AssemblyError."""
  if not candidates:
    raise AssemblyError('no_entities')
  order = [passage_ids[i] for i in rng.permutation(len(passage_ids))]
  answer = candidates[int(rng.integers(len(candidates)))]
  # Random passages are dropped (last drawn first) if "[MASK]" costs more
  # tokens than the answer did and the document overflows.
  droppable = list(passage_ids[1 + num_related:])
  while True:
    plain = separator.join(passages[i].text for i in order)
    try:
      masked, num_masks = masking.mask_entity(plain, answer.text)
    except ValueError as e:
      raise AssemblyError('unmaskable_answer') from e
    num_tokens = count_text_tokens(masked)
    if num_tokens <= max_tokens or not droppable:
      break
    order.remove(droppable.pop())
  if num_tokens > max_tokens:
    raise AssemblyError('too_long')
  if num_tokens < min_tokens:
    raise AssemblyError('too_short')
  if num_masks == 0:
    raise AssemblyError('answer_not_found')
  return Document(pivot, order, masked, num_tokens, answer,
                  surface_aliases(plain, answer.text), num_masks, num_related)
