"""Summary statistics of a built data set, as JSON and Markdown."""

import collections

import numpy as np


class DatasetStats:
  """Accumulates per-document figures while the data set is written."""

  def __init__(self, min_tokens: int, max_tokens: int):
    self.num_tokens: list[int] = []
    self.num_masks: list[int] = []
    self.num_chunks: list[int] = []
    self.candidates_per_chunk: list[int] = []
    self.answer_types: collections.Counter[str] = collections.Counter()
    self._edges = np.linspace(min_tokens, max_tokens, 9).round().astype(int)

  def add(self, document: dict) -> None:
    self.num_tokens.append(document['num_tokens'])
    self.num_masks.append(document['num_masks'])
    self.num_chunks.append(len(document['chunks']))
    self.candidates_per_chunk.extend(
        len(c) for c in document['recall_candidates'])
    self.answer_types[document['answer_type']] += 1

  def _histogram(self) -> list[dict]:
    counts, edges = np.histogram(self.num_tokens, bins=self._edges)
    return [{'from': int(a), 'to': int(b), 'count': int(c)}
            for a, b, c in zip(edges[:-1], edges[1:], counts)]

  @staticmethod
  def _summary(values: list[int]) -> dict:
    if not values:
      return {'mean': 0.0, 'min': 0, 'max': 0}
    return {'mean': round(float(np.mean(values)), 2),
            'min': int(np.min(values)), 'max': int(np.max(values))}

  def as_dict(self, skipped: dict, extra: dict) -> dict:
    return {
        **extra,
        'documents': len(self.num_tokens),
        'tokens': self._summary(self.num_tokens),
        'length_histogram': self._histogram(),
        'masks_per_document': self._summary(self.num_masks),
        # String keys so the dict survives a JSON round trip unchanged.
        'masks_histogram': {
            str(k): v
            for k, v in sorted(collections.Counter(self.num_masks).items())
        },
        'chunks_per_document': self._summary(self.num_chunks),
        'recall_candidates_per_chunk': self._summary(
            self.candidates_per_chunk),
        'answer_types': dict(self.answer_types.most_common()),
        'skipped': skipped,
    }


def stats_markdown(stats: dict, heading: str = 'Data set statistics') -> str:
  """Renders `DatasetStats.as_dict` output as a Markdown report."""
  lines = [f'## {heading}', '']
  for key in ('source', 'entity_extractor', 'tokenizer', 'passages',
              'documents', 'seconds', 'documents_per_second'):
    if key in stats:
      lines.append(f'- {key.replace("_", " ")}: {stats[key]}')
  for key in ('tokens', 'masks_per_document', 'chunks_per_document',
              'recall_candidates_per_chunk'):
    s = stats[key]
    lines.append(f'- {key.replace("_", " ")}: mean {s["mean"]}, '
                 f'min {s["min"]}, max {s["max"]}')
  lines += ['', '| tokens | documents |', '|---|---|']
  lines += [f'| {b["from"]}–{b["to"]} | {b["count"]} |'
            for b in stats['length_histogram']]
  lines += ['', '| masks per document | documents |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in stats['masks_histogram'].items()]
  lines += ['', '| answer entity type | documents |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in stats['answer_types'].items()]
  lines += ['', '| skipped input (reason) | count | examples |', '|---|---|---|']
  lines += [f'| {reason} | {v["count"]} | {", ".join(v["examples"][:3])} |'
            for reason, v in stats['skipped'].items()]
  if not stats['skipped']:
    lines.append('| (none) | 0 | |')
  return '\n'.join(lines) + '\n'
