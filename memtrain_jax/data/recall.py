"""Candidate entities per chunk for intermediate memory recall (IMR, §3.3).

The paper leaves the IMR target rule open (§9 NOT FOUND). Here a candidate is
an entity of the (already answer-masked) chunk that differs from the answer,
occurs in the chunk, and whose `[TARGET]` masking leaves neither itself nor
the answer visible in the chunk.
"""

from typing import Sequence

import numpy as np

from memtrain_jax.data import masking
from memtrain_jax.data.entities import Entity
from memtrain_jax.data.entities import is_usable_entity
from memtrain_jax.data.entities import normalize_entity
from memtrain_jax.data.entities import unique_entities


def _is_valid_target(chunk_text: str, entity: str, answer: str) -> bool:
  if normalize_entity(entity) == normalize_entity(answer):
    return False
  if not masking.is_maskable(entity):
    return False
  try:
    masked = masking.mask_recall_target(chunk_text, entity)
  except ValueError:
    return False
  return not (masking.is_visible(masked, answer)
              or masking.is_visible(masked, entity))


def chunk_candidates(chunk_text: str, entities: Sequence[Entity], answer: str,
                     allowed_types: Sequence[str], min_chars: int,
                     max_words: int, max_candidates: int,
                     rng: np.random.Generator) -> list[dict]:
  """Returns up to `max_candidates` targets: text, label, all char spans."""
  usable = unique_entities(
      e for e in entities
      if is_usable_entity(e, allowed_types, min_chars, max_words)
      and _is_valid_target(chunk_text, e.text, answer))
  if len(usable) > max_candidates:
    keep = sorted(rng.choice(len(usable), max_candidates, replace=False))
    usable = [usable[i] for i in keep]
  return [{
      'text': e.text,
      'label': e.label,
      'spans': [list(span)
                for span in masking.find_occurrences(chunk_text, e.text)],
  } for e in usable]
