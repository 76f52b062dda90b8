"""Readers: formats, detokenisation, and bad input skipped with its location."""

import json
import os

import pytest

from memtrain_jax.data import sources
from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.skips import SkipLog

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared',
                      'data')
HOTPOTQA = os.path.join(SHARED, 'hotpotqa_dev_gold_q000-049.json')


def test_detokenize_wikitext_undoes_joiners_and_spacing():
  line = ('He had a guest @-@ starring role in 2 @,@ 000 films ( 1 @.@ 5 % ) '
          ', as " Craig " in Teddy \'s Story ; it did n\'t end .')
  assert sources.detokenize_wikitext(line) == (
      'He had a guest-starring role in 2,000 films (1.5%), as "Craig" in '
      "Teddy's Story; it didn't end.")


def test_parse_wikitext_splits_articles_and_drops_headings():
  lines = [' = First = \r\n', ' \n', ' Alpha beta . Gamma . \n',
           ' = = Section = = \n', ' Delta @-@ epsilon . \n',
           ' = Second = \n', ' = = Only heading = = \n',
           ' = Third = \n', ' Zeta . \n']
  skips = SkipLog()
  records = list(sources.parse_wikitext(lines, skips, 'w.raw'))
  assert records == [
      {'title': 'First', 'text': 'Alpha beta. Gamma.\nDelta-epsilon.'},
      {'title': 'Third', 'text': 'Zeta.'},
  ]
  assert skips.as_dict() == {
      'empty_text': {'count': 1, 'examples': ['w.raw:Second']}}


def test_bundled_corpus_is_whole_detokenized_articles():
  records = sources.load_bundled_corpus()
  assert len(records) == 20
  assert records[0]['title'] == 'Robert Boulter'
  assert records[-1]['title'] == 'Imagism'
  text = '\n'.join(r['text'] for r in records)
  assert ' @-@ ' not in text and ' @,@ ' not in text and ' , ' not in text
  assert "Teddy's Story" in records[0]['text']


def test_read_jsonl_skips_bad_lines_with_file_and_line(tmp_path):
  path = tmp_path / 'wiki.jsonl'
  lines = [
      json.dumps({'title': 'Good', 'text': 'Fine text.'}).encode(),
      b'{"title": "Broken", "text": ',
      b'{"title": "Latin1", "text": "caf\xe9"}',
      json.dumps({'title': 'No text'}).encode(),
      json.dumps({'title': 'Empty', 'text': '  '}).encode(),
      json.dumps(['not', 'an', 'object']).encode(),
      json.dumps({'title': 3, 'text': 4}).encode(),
      b'',
      json.dumps({'title': 'Also good', 'text': 'More.'}).encode(),
  ]
  path.write_bytes(b'\n'.join(lines) + b'\n')
  skips = SkipLog()
  records = list(sources.read_jsonl(str(path), skips))
  assert [r['title'] for r in records] == ['Good', 'Also good']
  assert skips.as_dict() == {
      'corrupt_json': {'count': 1, 'examples': ['wiki.jsonl:2']},
      'empty_text': {'count': 1, 'examples': ['wiki.jsonl:5']},
      'missing_field': {'count': 1, 'examples': ['wiki.jsonl:4']},
      'non_utf8': {'count': 1, 'examples': ['wiki.jsonl:3']},
      'not_an_object': {'count': 1, 'examples': ['wiki.jsonl:6']},
      'wrong_field_type': {'count': 1, 'examples': ['wiki.jsonl:7']},
  }


def test_read_wikitext_file_skips_non_utf8_lines(tmp_path):
  path = tmp_path / 'w.raw'
  path.write_bytes(b' = T = \n Good line . \n Bad \xff line . \n')
  skips = SkipLog()
  assert list(sources.read_wikitext(str(path), skips)) == [
      {'title': 'T', 'text': 'Good line.'}]
  assert skips.counts == {'non_utf8': 1}


def test_read_txt_dir_uses_stem_as_title(tmp_path):
  (tmp_path / 'b.txt').write_text('Bee text.', encoding='utf-8')
  (tmp_path / 'a.txt').write_text('Ant text.', encoding='utf-8')
  (tmp_path / 'bad.txt').write_bytes(b'\xff\xfe\x00bad')
  (tmp_path / 'notes.md').write_text('ignored', encoding='utf-8')
  skips = SkipLog()
  records = list(sources.read_txt_dir(str(tmp_path), skips))
  assert records == [{'title': 'a', 'text': 'Ant text.'},
                     {'title': 'b', 'text': 'Bee text.'}]
  assert skips.as_dict()['non_utf8']['examples'] == ['bad.txt']


def test_read_parquet_hugging_face_export(tmp_path):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  table = pa.table({'id': ['1', '2', '3'], 'title': ['A', 'B', None],
                    'text': ['Alpha.', None, 'Gamma.']})
  path = tmp_path / 'train-00000-of-00001.parquet'
  pq.write_table(table, path)
  skips = SkipLog()
  assert list(sources.read_parquet(str(path), skips)) == [
      {'title': 'A', 'text': 'Alpha.'}]
  assert skips.counts == {'missing_field': 2}


def test_read_hotpotqa_both_layouts(tmp_path):
  columnar = [{'context': {'title': ['X', 'Y'],
                           'sentences': [['X is one.', ' X two.'], ['Y.']]}},
              {'question': 'no context'}]
  listed = [{'context': [['X', ['dup.']], ['Z', ['Z one.', ' Z two.']]]}]
  path = tmp_path / 'h.json'
  path.write_text(json.dumps(columnar + listed), encoding='utf-8')
  skips = SkipLog()
  records = list(sources.read_hotpotqa(str(path), skips))
  assert records == [{'title': 'X', 'text': 'X is one. X two.'},
                     {'title': 'Y', 'text': 'Y.'},
                     {'title': 'Z', 'text': 'Z one. Z two.'}]
  assert skips.counts == {'missing_field': 1, 'duplicate_title': 1}


@pytest.mark.skipif(not os.path.exists(HOTPOTQA), reason='no shared data')
def test_read_hotpotqa_shared_dev_sample():
  skips = SkipLog()
  records = list(sources.read_hotpotqa(HOTPOTQA, skips))
  with open(HOTPOTQA, encoding='utf-8') as f:
    paragraphs = sum(len(q['context']['title']) for q in json.load(f))
  assert len(records) + skips.counts['duplicate_title'] == paragraphs
  assert all(r['text'].strip() for r in records)


def test_read_source_dispatch_and_max_articles():
  cfg = default_data_config().source
  cfg.max_articles = 3
  records = list(sources.read_source(cfg, SkipLog()))
  assert [r['title'] for r in records] == [
      'Robert Boulter', 'Du Fu', 'Kiss You (One Direction song)']
  cfg.kind = 'nope'
  with pytest.raises(ValueError, match='unknown source kind'):
    list(sources.read_source(cfg, SkipLog()))
