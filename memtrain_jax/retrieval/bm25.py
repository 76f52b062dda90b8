"""An in-process BM25 retriever over a corpus of passages (bm25s backend).

It stands in for Search-R1/MEM1's e5 + FAISS retriever (anchors Part B §3.2) where no GPU or index
download is available; it has the same `.retrieve(queries, topk)` shape as the HTTP client, so the
search environment can use either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import bm25s
from bm25s.tokenization import Tokenizer

from memtrain_jax.retrieval.corpus import CorpusDoc, load_corpus
from memtrain_jax.retrieval.passage import Passage

# bm25s sets its logger to DEBUG when imported, which puts its debug lines on the console past any
# root level; NOTSET hands the decision back to the application's logging setup. Every user of
# bm25s in the package imports it from here (`data.retrieval` too), so this is done once.
logging.getLogger("bm25s").setLevel(logging.NOTSET)


class BM25Retriever:
  """BM25 (Lucene-style defaults, English stopwords, no stemming) over `CorpusDoc`s."""

  def __init__(self, docs: Sequence[CorpusDoc]):
    if not docs:
      raise ValueError("BM25Retriever needs at least one document")
    self.docs = list(docs)
    self._tokenizer = Tokenizer(stopwords="english")
    corpus_ids = self._tokenizer.tokenize(
        [d.contents for d in self.docs], return_as="ids", show_progress=False)
    self._index = bm25s.BM25()
    self._index.index(corpus_ids, show_progress=False)
    # Tokenizing queries reads the shared vocabulary and bm25s keeps scratch state in the index;
    # the HTTP server calls this from many threads, so searches take turns.
    self._lock = threading.Lock()

  @classmethod
  def from_jsonl(cls, path: str | os.PathLike[str]) -> "BM25Retriever":
    return cls(load_corpus(path))

  def __len__(self) -> int:
    return len(self.docs)

  def search(self, queries: Sequence[str], topk: int) -> list[list[tuple[CorpusDoc, float]]]:
    """Returns up to `topk` (doc, score) pairs per query, best first.

    Documents that share no term with the query (score 0) are left out, as Lucene's BM25 does,
    so a query of unknown words gets an empty list instead of arbitrary documents.
    """
    if topk < 1:
      raise ValueError(f"topk must be >= 1, got {topk}")
    if not queries:
      return []
    k = min(topk, len(self.docs))
    with self._lock:
      query_ids = self._tokenizer.tokenize(
          list(queries), update_vocab=False, return_as="ids", show_progress=False)
      indices, scores = self._index.retrieve(query_ids, k=k, show_progress=False, n_threads=1)
    results = []
    for row_indices, row_scores in zip(indices.tolist(), scores.tolist()):
      results.append([(self.docs[i], s) for i, s in zip(row_indices, row_scores) if s > 0])
    return results

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
    return [[Passage(contents=doc.contents, score=score, doc_id=doc.doc_id)
             for doc, score in hits] for hits in self.search(queries, topk)]
