"""End to end: invariants of built documents, determinism, bad input, resume."""

import json
import os
import re

import pytest

from memtrain_jax.data import masking
from memtrain_jax.data.cli import main as cli_main
from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.entities import RuleEntityExtractor
from memtrain_jax.data.pipeline import build_dataset
from memtrain_jax.data.sources import load_bundled_corpus
from memtrain_jax.data.stream import DocumentStream
from memtrain_jax.data.tokens import RegexTokenizer
from memtrain_jax.data.tokens import TokenCounter


def visible_as_whole_word(text: str, answer: str) -> bool:
  words = [re.escape(w) for w in answer.split()]
  pattern = r'(?<!\w)' + r'\s+'.join(words) + r'(?!\w)'
  return re.search(pattern, text, re.IGNORECASE) is not None


def small_config(seed=0, num_documents=6):
  cfg = default_data_config()
  cfg.seed = seed
  cfg.num_documents = num_documents
  cfg.source.max_articles = 8
  cfg.entities.backend = 'rules'
  cfg.assembly.num_passages = 10
  cfg.assembly.min_tokens = 300
  cfg.assembly.max_tokens = 900
  cfg.chunking.chunk_size = 128
  cfg.chunking.max_chunks = 8
  return cfg


def build(cfg, out_dir):
  return build_dataset(cfg, str(out_dir), TokenCounter(RegexTokenizer()),
                       RuleEntityExtractor())


def read_documents(out_dir):
  with open(os.path.join(out_dir, 'documents-00000.jsonl'),
            encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('built')
  report = build(small_config(), out_dir)
  return out_dir, report, read_documents(out_dir)


def test_documents_satisfy_the_task_invariants(built):
  _, report, documents = built
  assert report['documents'] == len(documents) == 6
  counter = TokenCounter(RegexTokenizer())
  for doc in documents:
    answer = doc['answer']
    assert not visible_as_whole_word(doc['text'], answer)
    assert doc['text'].count(masking.MASK) == doc['num_masks'] >= 1
    assert 300 <= counter.count(doc['text']) <= 900
    assert 1 <= len(doc['chunks']) <= 8
    assert ''.join(doc['chunks']) == doc['text']
    assert any(masking.MASK in chunk for chunk in doc['chunks'])
    for chunk, candidates in zip(doc['chunks'], doc['recall_candidates']):
      assert counter.count(chunk) <= 128
      assert not visible_as_whole_word(chunk, answer)
      for candidate in candidates:
        assert candidate['spans']
        for start, end in candidate['spans']:
          assert (' '.join(chunk[start:end].split()).casefold()
                  .replace('’', "'") == ' '.join(candidate['text'].split())
                  .casefold().replace('’', "'"))
        masked = masking.mask_recall_target(chunk, candidate['text'])
        assert not visible_as_whole_word(masked, answer)
        assert not visible_as_whole_word(masked, candidate['text'])
        assert masked.count(masking.TARGET) == len(candidate['spans'])


def test_stats_reports_are_written(built):
  out_dir, report, _ = built
  with open(os.path.join(out_dir, 'stats.json'), encoding='utf-8') as f:
    assert json.load(f) == report
  assert sum(b['count'] for b in report['length_histogram']) == 6
  assert sum(report['answer_types'].values()) == 6
  markdown = open(os.path.join(out_dir, 'stats.md'), encoding='utf-8').read()
  assert '| answer entity type | documents |' in markdown


def test_same_seed_same_output_other_seed_differs(built, tmp_path):
  out_dir, _, documents = built
  build(small_config(), tmp_path / 'again')
  assert read_documents(tmp_path / 'again') == documents
  build(small_config(seed=1), tmp_path / 'other')
  assert read_documents(tmp_path / 'other') != documents


def test_bad_input_is_skipped_and_counted(tmp_path):
  good = load_bundled_corpus()[:2]
  lines = [json.dumps(r).encode() for r in good] + [
      json.dumps({'title': 'Empty', 'text': ''}).encode(),
      json.dumps({'title': 'One', 'text': 'Only one sentence here.'}).encode(),
      json.dumps({'title': 'Plain', 'text': ' '.join(
          ['Some lowercase words without any names.'] * 12)}).encode(),
      json.dumps({'text': 'no title.'}).encode(),
      b'{"title": "cut',
      b'{"title": "bytes", "text": "\xff\xfe"}',
  ]
  (tmp_path / 'wiki.jsonl').write_bytes(b'\n'.join(lines))
  cfg = small_config(num_documents=1000)
  cfg.source.kind = 'jsonl'
  cfg.source.path = str(tmp_path / 'wiki.jsonl')
  report = build(cfg, tmp_path / 'out')
  skipped = report['skipped']
  assert skipped['corrupt_json']['examples'] == ['wiki.jsonl:7']
  assert skipped['non_utf8']['examples'] == ['wiki.jsonl:8']
  assert skipped['missing_field']['examples'] == ['wiki.jsonl:6']
  assert skipped['empty_text']['count'] == 1
  assert skipped['one_sentence']['examples'] == ['One']
  assert 'Plain#0' in skipped['no_entities']['examples']
  assert report['documents'] > 0


def test_stream_resumes_exactly_and_reshuffles_per_epoch(built):
  out_dir, _, documents = built
  stream = DocumentStream(str(out_dir), seed=3)
  first_epoch = [next(stream)['id'] for _ in range(len(stream))]
  second_epoch = [next(stream)['id'] for _ in range(len(stream))]
  assert sorted(first_epoch) == sorted(d['id'] for d in documents)
  assert sorted(second_epoch) == sorted(first_epoch) != second_epoch
  next(stream)
  next(stream)
  state = json.loads(json.dumps(stream.state()))
  assert state['epoch'] == 2 and state['position'] == 2
  expected = [next(stream)['id'] for _ in range(9)]
  resumed = DocumentStream(str(out_dir), seed=0)
  resumed.restore(state)
  assert [next(resumed)['id'] for _ in range(9)] == expected
  with pytest.raises(ValueError, match='documents'):
    resumed.restore({**state, 'num_documents': 99})


def test_cli_build_and_errors(tmp_path, capsys):
  out_dir = str(tmp_path / 'cli')
  assert cli_main(['build', '--out', out_dir, '--set', 'num_documents=2',
                   '--set', 'entities.backend=rules',
                   '--set', 'source.max_articles=4']) == 0
  assert '- documents: 2' in capsys.readouterr().out
  assert len(read_documents(out_dir)) == 2
  assert cli_main(['build', '--out', out_dir, '--set', 'no.such=1']) == 2
  assert cli_main(['build', '--out', out_dir, '--set',
                   'assembly.max_tokens=999999']) == 2
