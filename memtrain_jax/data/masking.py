"""Replaces every occurrence of an entity with a placeholder.

The proxy task only works if the answer cannot be copied, so matching is
deliberately loose: any letter case, any run of whitespace (line breaks
included) between the entity's words, a hyphen or a space where the entity
has a hyphen, straight or curly apostrophes, an optional final '.' for
abbreviations, and possessives ("Boulter's" -> "[MASK]'s"). It is never
inside a longer word: "Bill" is not masked in "Billy" or "Billboard".
"""

import functools
import re

MASK = '[MASK]'
TARGET = '[TARGET]'
_PLACEHOLDERS = f'{MASK} {TARGET}'
_APOSTROPHES = "'’‘`"
_HYPHENS = '-‐‑–—'
# Re-masking after one pass is only needed for entities that start or end
# with punctuation; more passes than this mean the entity cannot be masked.
_MAX_PASSES = 4


@functools.lru_cache(maxsize=4096)
def entity_pattern(entity: str) -> re.Pattern:
  """The whole-word, case-insensitive regex for every surface form."""
  entity = entity.strip()
  if not entity:
    raise ValueError('empty entity')
  parts = []
  for index, char in enumerate(entity):
    if char.isspace():
      if parts and parts[-1] != r'\s+':
        parts.append(r'\s+')
    elif char in _APOSTROPHES:
      parts.append(f'[{_APOSTROPHES}]')
    elif char in _HYPHENS:
      parts.append(f'(?:\\s*[{_HYPHENS}]\\s*|\\s+)')
    elif char == '.' and index == len(entity) - 1 and index > 0:
      parts.append(r'\.?')
    else:
      parts.append(re.escape(char))
  body = ''.join(parts)
  return re.compile(rf'(?<!\w){body}(?!\w)', re.IGNORECASE)


def find_occurrences(text: str, entity: str) -> list[tuple[int, int]]:
  """Char spans of every whole-word occurrence of `entity` in `text`."""
  return [m.span() for m in entity_pattern(entity).finditer(text)]


def is_visible(text: str, entity: str) -> bool:
  return entity_pattern(entity).search(text) is not None


def is_maskable(entity: str) -> bool:
  """False for entities that a placeholder itself would reveal ("mask")."""
  if not entity.strip() or not any(c.isalnum() for c in entity):
    return False
  return not is_visible(_PLACEHOLDERS, entity)


def mask_entity(text: str, entity: str,
                placeholder: str = MASK) -> tuple[str, int]:
  """Returns (text with every occurrence replaced, number of replacements).

  Raises ValueError when the entity cannot be masked: empty, revealed by the
  placeholders, or still visible after repeated passes.
  """
  if not is_maskable(entity):
    raise ValueError(f'entity {entity!r} cannot be masked')
  pattern = entity_pattern(entity)
  total = 0
  for _ in range(_MAX_PASSES):
    text, count = pattern.subn(placeholder, text)
    total += count
    if count == 0 or not pattern.search(text):
      return text, total
  raise ValueError(f'entity {entity!r} is still visible after masking')


def mask_recall_target(chunk_text: str, entity: str) -> str:
  """Masks every occurrence of a recall entity in one chunk as `[TARGET]`.

  Raises ValueError if the entity does not occur in the chunk, so an IMR
  prompt is never built from a chunk with nothing to recall.
  """
  masked, count = mask_entity(chunk_text, entity, TARGET)
  if count == 0:
    raise ValueError(f'entity {entity!r} does not occur in the chunk')
  return masked
