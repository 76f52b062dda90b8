"""BM25 search for the passages related to a pivot passage.

The paper retrieves the "top-29 semantically related" passages with a
retriever it does not name (§9 NOT FOUND); BM25 is the lexical stand-in.
"""

import re
from typing import Sequence

import numpy as np

from memtrain_jax.data.passages import Passage

_WORD_RE = re.compile(r'(?u)\b\w\w+\b')


def _tokens(text: str, stopwords: frozenset[str]) -> list[str]:
  return [w for w in _WORD_RE.findall(text.lower()) if w not in stopwords]


def _english_stopwords() -> frozenset[str]:
  try:
    from bm25s.stopwords import STOPWORDS_EN  # pylint: disable=g-import-not-at-top
    return frozenset(STOPWORDS_EN)
  except ImportError:
    return frozenset()


class PassageIndex:
  """BM25 index over passages; `related` excludes the pivot (and its article)."""

  def __init__(self, passages: Sequence[Passage], backend: str = 'bm25s'):
    self.passages = list(passages)
    self._articles = np.array([p.article_index for p in self.passages])
    self._stopwords = _english_stopwords()
    corpus = [_tokens(p.text, self._stopwords) for p in self.passages]
    self.backend = backend
    if backend == 'bm25s':
      # Through the retriever module, which hands bm25s's DEBUG logger back to the application.
      from memtrain_jax.retrieval.bm25 import bm25s  # pylint: disable=g-import-not-at-top
      self._bm25 = bm25s.BM25()
      self._bm25.index(corpus, show_progress=False)
    elif backend == 'rank_bm25':
      from rank_bm25 import BM25Okapi  # pylint: disable=g-import-not-at-top
      # BM25Okapi divides by zero on an empty token list.
      self._bm25 = BM25Okapi([doc or ['_'] for doc in corpus])
    else:
      raise ValueError(f'unknown retrieval backend {backend!r}')

  def __len__(self) -> int:
    return len(self.passages)

  def _scores(self, query: list[str]) -> np.ndarray:
    # Both libraries expose get_scores(list_of_query_tokens) over all docs.
    return np.asarray(self._bm25.get_scores(query), dtype=np.float64)

  def related(self, pivot: int, k: int,
              exclude_pivot_article: bool = True) -> list[int]:
    """Returns up to k passage indices most related to passage `pivot`.

    Only passages with a positive score are returned; ties are broken by
    index so the result is deterministic.
    """
    query = _tokens(self.passages[pivot].text, self._stopwords)
    if not query or k <= 0:
      return []
    scores = self._scores(query)
    scores[pivot] = -np.inf
    if exclude_pivot_article:
      scores[self._articles == self._articles[pivot]] = -np.inf
    # Stable sort on -score keeps equal scores in index order.
    order = np.argsort(-scores, kind='stable')[:k]
    return [int(i) for i in order if scores[i] > 0]
