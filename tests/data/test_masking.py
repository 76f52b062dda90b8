"""Masking: every occurrence goes, whatever its case, spacing or possessive."""

import re

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from memtrain_jax.data import masking
from memtrain_jax.data.entities import RuleEntityExtractor
from memtrain_jax.data.passages import segment_articles
from memtrain_jax.data.skips import SkipLog
from memtrain_jax.data.sources import load_bundled_corpus


def visible_as_whole_word(text: str, answer: str) -> bool:
  """The answer with its words separated by any whitespace, any case."""
  words = [re.escape(w) for w in answer.split()]
  pattern = r'(?<!\w)' + r'\s+'.join(words) + r'(?!\w)'
  return re.search(pattern, text, re.IGNORECASE) is not None


def word_sequence_visible(text: str, answer: str) -> bool:
  """Independent check: the answer's words appear consecutively in text.

  Punctuation is kept as its own token: "A. B" does not show the answer "A B".
  """
  words = re.findall(r'\w+|[^\w\s]', text.casefold())
  target = re.findall(r'\w+', answer.casefold())
  return any(words[i:i + len(target)] == target
             for i in range(len(words) - len(target) + 1))


@pytest.mark.parametrize('text, entity, expected, count', [
    ("Boulter's role; BOULTER and boulter.", 'Boulter',
     "[MASK]'s role; [MASK] and [MASK].", 3),
    ('Robert\n  Boulter acted.', 'Robert Boulter', '[MASK] acted.', 1),
    ('Bill, Billy, Billboard, bill’s, XBill.', 'Bill',
     '[MASK], Billy, Billboard, [MASK]’s, XBill.', 2),
    ('Ise-class, Ise class and Ise - class.', 'Ise-class',
     '[MASK], [MASK] and [MASK].', 3),
    ('The U.S. and the U.S, not USA.', 'U.S.',
     'The [MASK] and the [MASK], not USA.', 2),
    ("Teddy’s Story and Teddy's Story.", "Teddy's Story",
     '[MASK] and [MASK].', 2),
    ('In 1933 and 19330 and 1933.5.', '1933', 'In [MASK] and 19330 and [MASK].5.', 2),
])
def test_mask_entity_examples(text, entity, expected, count):
  assert masking.mask_entity(text, entity) == (expected, count)


@pytest.mark.parametrize('entity', ['mask', 'MASK', '[MASK]', 'target', '', '--'])
def test_placeholder_words_cannot_be_answers(entity):
  assert not masking.is_maskable(entity)
  with pytest.raises(ValueError):
    masking.mask_entity('a mask and a target', entity)


def test_mask_recall_target_masks_all_and_requires_presence():
  chunk = 'Du Fu met Li Bai. Later du fu wrote of [MASK].'
  assert masking.mask_recall_target(chunk, 'Du Fu') == (
      '[TARGET] met Li Bai. Later [TARGET] wrote of [MASK].')
  with pytest.raises(ValueError, match='does not occur'):
    masking.mask_recall_target(chunk, 'Wang Wei')


# Generated text: a tiny alphabet makes near-misses (prefixes, repeated
# words, entities inside longer words) frequent.
_WORD = st.text(alphabet='abéAB', min_size=1, max_size=3)
_SEPARATOR = st.sampled_from([' ', '\n', '  ', ' \n ', '\t'])
_SUFFIX = st.sampled_from(['', '', "'s", '’s', '.', ','])


def _random_case(draw, word):
  flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
  return ''.join(c.upper() if f else c.lower() for c, f in zip(word, flips))


@st.composite
def text_with_entity(draw):
  entity_words = draw(st.lists(_WORD, min_size=1, max_size=3))
  entity = ' '.join(entity_words)
  pieces = []
  for _ in range(draw(st.integers(0, 25))):
    if draw(st.integers(0, 3)) == 0:
      words = [_random_case(draw, w) for w in entity_words]
      piece = ''.join(w + draw(_SEPARATOR) for w in words[:-1]) + words[-1]
    else:
      piece = draw(_WORD)
    pieces.append(piece + draw(_SUFFIX) + draw(_SEPARATOR))
  return ''.join(pieces), entity


@settings(max_examples=300, deadline=None)
@given(text_with_entity())
def test_masked_answer_never_visible_in_generated_text(case):
  text, entity = case
  masked, count = masking.mask_entity(text, entity)
  assert not word_sequence_visible(masked, entity)
  assert not visible_as_whole_word(masked, entity)
  assert count == masked.count(masking.MASK)
  assert (count > 0) == word_sequence_visible(text, entity)


_PASSAGES = segment_articles(load_bundled_corpus()[:6], 40, 160, SkipLog())
_EXTRACTOR = RuleEntityExtractor()


@st.composite
def real_passage_and_entity(draw):
  text = draw(st.sampled_from(_PASSAGES)).text
  entities = [e for e in _EXTRACTOR.extract([text])[0]
              if masking.is_maskable(e.text)]
  if not entities:
    return text, None
  entity = draw(st.sampled_from(entities))
  # Re-break the entity across a line and change its case somewhere.
  start, end = entity.start, entity.end
  variant = draw(st.sampled_from(['same', 'upper', 'lower', 'newline']))
  surface = text[start:end]
  if variant == 'upper':
    surface = surface.upper()
  elif variant == 'lower':
    surface = surface.lower()
  elif variant == 'newline':
    surface = surface.replace(' ', '\n')
  return text[:start] + surface + text[end:], entity.text


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(real_passage_and_entity())
def test_masked_answer_never_visible_in_real_text(case):
  text, entity = case
  if entity is None:
    return
  occurrences = masking.find_occurrences(text, entity)
  masked, count = masking.mask_entity(text, entity)
  assert count == len(occurrences) >= 1
  assert not visible_as_whole_word(masked, entity)
  # Everything outside the occurrences is untouched.
  rebuilt, previous = [], 0
  for start, end in occurrences:
    rebuilt += [text[previous:start], masking.MASK]
    previous = end
  assert ''.join(rebuilt) + text[previous:] == masked
