"""Builds the masked long-document data set end to end.

records -> passages -> BM25 index -> for each pivot (seeded order): assemble,
mask, chunk, recall candidates -> JSONL shards + stats.json + stats.md.
Each document draws from its own generator seeded by (seed, pivot), so a
document does not depend on which earlier pivots were skipped.
"""

import json
import time
from typing import Iterable, Iterator

import ml_collections
import numpy as np
from etils import epath

from memtrain_jax import paths
from memtrain_jax.data import assembly
from memtrain_jax.data import recall
from memtrain_jax.data.chunking import chunk_document
from memtrain_jax.data.config import validate_data_config
from memtrain_jax.data.entities import EntityExtractor
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.masking import is_visible
from memtrain_jax.data.passages import segment_articles
from memtrain_jax.data.retrieval import PassageIndex
from memtrain_jax.data.skips import SkipLog
from memtrain_jax.data.sources import read_source
from memtrain_jax.data.stats import DatasetStats
from memtrain_jax.data.stats import stats_markdown
from memtrain_jax.data.tokens import TokenCounter
from memtrain_jax.data.tokens import load_data_tokenizer

SHARD_PATTERN = 'documents-{:05d}.jsonl'


def _chunks_leak_answer(chunks, answer: str) -> bool:
  return any(is_visible(chunk.text, answer) for chunk in chunks)


class DocumentBuilder:
  """Turns pivots into finished document dicts; counts skipped pivots."""

  def __init__(self, cfg: ml_collections.ConfigDict, passages,
               counter: TokenCounter, extractor: EntityExtractor,
               skips: SkipLog):
    self.cfg = cfg
    self.passages = passages
    self.counter = counter
    self.extractor = extractor
    self.skips = skips
    self.index = PassageIndex(passages, cfg.retrieval.backend)
    self._separator_tokens = counter.count(cfg.assembly.separator)
    self._token_counts: dict[int, int] = {}

  def _passage_tokens(self, passage: int) -> int:
    count = self._token_counts.get(passage)
    if count is None:
      count = self.counter.count(self.passages[passage].text)
      count += self._separator_tokens
      self._token_counts[passage] = count
    return count

  def build(self, pivot: int, document_id: str) -> dict | None:
    """Returns the document for `pivot`, or None (counted in skips)."""
    cfg = self.cfg
    ents = cfg.entities
    rng = np.random.default_rng([cfg.seed, pivot])
    pivot_passage = self.passages[pivot]
    where = f'{pivot_passage.title}#{pivot_passage.passage_index}'
    candidates = assembly.answer_candidates(
        self.extractor.extract([pivot_passage.text])[0], ents.allowed_types,
        ents.min_chars, ents.max_words)
    passage_ids, num_related = assembly.select_passages(
        pivot, self.index, rng, self._passage_tokens,
        cfg.retrieval.num_related, cfg.assembly.num_passages,
        cfg.assembly.max_tokens, cfg.retrieval.exclude_pivot_article)
    try:
      document = assembly.assemble_document(
          pivot, self.passages, passage_ids, num_related, candidates, rng,
          self.counter.count, cfg.assembly.min_tokens, cfg.assembly.max_tokens,
          cfg.assembly.separator)
    except assembly.AssemblyError as e:
      self.skips.skip(e.reason, where)
      return None
    answer = document.answer
    if is_visible(document.text, answer.text):
      self.skips.skip('answer_visible', where)
      return None
    chunks = chunk_document(document.text, self.counter,
                            cfg.chunking.chunk_size,
                            cfg.chunking.boundary_backoff_tokens)
    if len(chunks) > cfg.chunking.max_chunks:
      self.skips.skip('too_many_chunks', where)
      return None
    if any(self.counter.count(c.text) > cfg.chunking.chunk_size
           for c in chunks):
      self.skips.skip('chunk_over_size', where)
      return None
    if _chunks_leak_answer(chunks, answer.text):
      self.skips.skip('answer_visible_in_chunk', where)
      return None
    chunk_texts = [c.text for c in chunks]
    chunk_entities = self.extractor.extract(chunk_texts)
    candidates_per_chunk = [
        recall.chunk_candidates(text, entities, answer.text,
                                ents.allowed_types, ents.min_chars,
                                ents.max_words, ents.max_recall_candidates,
                                rng)
        for text, entities in zip(chunk_texts, chunk_entities)
    ]
    return {
        'id': document_id,
        'pivot_title': pivot_passage.title,
        'pivot_passage': pivot_passage.passage_index,
        'answer': answer.text,
        'answer_aliases': document.aliases,
        'answer_type': answer.label,
        'num_masks': document.num_masks,
        'num_tokens': document.num_tokens,
        'num_passages': len(document.passage_ids),
        'num_related': document.num_related,
        'text': document.text,
        'chunks': chunk_texts,
        'chunk_tokens': [c.num_tokens for c in chunks],
        'recall_candidates': candidates_per_chunk,
    }


def iter_documents(cfg: ml_collections.ConfigDict, records: Iterable[dict],
                   counter: TokenCounter, extractor: EntityExtractor,
                   skips: SkipLog, info: dict | None = None) -> Iterator[dict]:
  """Yields up to `cfg.num_documents` documents from `records`."""
  validate_data_config(cfg)
  passages = segment_articles(records, cfg.passages.min_words,
                              cfg.passages.max_words, skips)
  if info is not None:
    info['passages'] = len(passages)
  if not passages:
    return
  builder = DocumentBuilder(cfg, passages, counter, extractor, skips)
  pivots = np.random.default_rng(cfg.seed).permutation(len(passages))
  built = 0
  for pivot in pivots:
    if built >= cfg.num_documents:
      return
    document = builder.build(int(pivot), f'{cfg.seed}-{built:06d}')
    if document is not None:
      built += 1
      yield document


def build_dataset(cfg: ml_collections.ConfigDict, out_dir: epath.PathLike,
                  counter: TokenCounter | None = None,
                  extractor: EntityExtractor | None = None) -> dict:
  """Writes the data set and its stats to `out_dir`; returns the stats.

  `out_dir` may be a local path or a URL such as gs://bucket/data (written through epath).
  """
  validate_data_config(cfg)
  counter = counter or load_data_tokenizer(cfg.tokenizer.path)
  extractor = extractor or make_extractor(cfg.entities.backend,
                                          cfg.entities.spacy_models)
  out = paths.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # Shards of an earlier build would otherwise be read as part of this one.
  for path in out.iterdir():
    if path.name.startswith('documents-') and path.name.endswith('.jsonl'):
      path.unlink()
  skips = SkipLog()
  stats = DatasetStats(cfg.assembly.min_tokens, cfg.assembly.max_tokens)
  info = {}
  started = time.perf_counter()
  shard, shard_file, in_shard = 0, None, 0
  try:
    for document in iter_documents(cfg, read_source(cfg.source, skips),
                                   counter, extractor, skips, info):
      if shard_file is None or in_shard >= cfg.output.documents_per_shard:
        if shard_file is not None:
          shard_file.close()
          shard += 1
        shard_file = (out / SHARD_PATTERN.format(shard)).open('w', encoding='utf-8')
        in_shard = 0
      shard_file.write(json.dumps(document, ensure_ascii=False) + '\n')
      in_shard += 1
      stats.add(document)
  finally:
    if shard_file is not None:
      shard_file.close()
  seconds = time.perf_counter() - started
  report = stats.as_dict(skips.as_dict(), {
      'source': cfg.source.kind if cfg.source.kind != 'bundled' else
                'bundled WikiText-2 test articles',
      'entity_extractor': extractor.name,
      'tokenizer': counter.name,
      'passages': info.get('passages', 0),
      'seconds': round(seconds, 2),
      'documents_per_second': round(len(stats.num_tokens) / seconds, 3)
                              if seconds > 0 else 0.0,
  })
  (out / 'stats.json').write_text(json.dumps(report, indent=2, ensure_ascii=False),
                                  encoding='utf-8')
  (out / 'stats.md').write_text(stats_markdown(report), encoding='utf-8')
  (out / 'config.json').write_text(cfg.to_json(indent=2), encoding='utf-8')
  return report
