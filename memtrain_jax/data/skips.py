"""Counts inputs the pipeline skipped, by reason, with a few locations each.

Bad input (a corrupt JSONL line, non-UTF-8 bytes, an article with no entity)
must never stop a long build midway; it is skipped and reported instead.
"""

import collections

_EXAMPLES_PER_REASON = 5


class SkipLog:
  """Skipped-input counter; `where` is e.g. 'file.jsonl:17' or a title."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def skip(self, reason: str, where: str = '') -> None:
    self.counts[reason] += 1
    if where and len(self.examples[reason]) < _EXAMPLES_PER_REASON:
      self.examples[reason].append(where)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def as_dict(self) -> dict:
    return {
        reason: {'count': count, 'examples': list(self.examples[reason])}
        for reason, count in sorted(self.counts.items())
    }
