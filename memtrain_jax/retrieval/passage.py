"""A retrieved passage and its Search-R1 text forms.

Corpus rows of the wiki-18 dump store one field, `contents` = '"Title"\\ntext'
(anchors Part B §3.2);
the agents show passages to the model as "Doc i(Title: <first line>) <rest>" lines
(Search-R1 `_passages2string`, reused verbatim in structure by MEM1), quotes included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def contents_from_title_text(title: str, text: str) -> str:
  return f'"{title}"\n{text}'


@dataclasses.dataclass(frozen=True)
class Passage:
  contents: str
  score: float | None = None
  doc_id: str | None = None

  @property
  def title(self) -> str:
    return self.contents.split("\n", 1)[0].strip('"')

  @property
  def text(self) -> str:
    parts = self.contents.split("\n", 1)
    return parts[1] if len(parts) == 2 else ""


def format_passages(passages: Sequence[Passage]) -> str:
  """Search-R1's observation text: one "Doc i(Title: ...) text" line per passage."""
  lines = []
  for i, passage in enumerate(passages):
    first_line, _, rest = passage.contents.partition("\n")
    lines.append(f"Doc {i + 1}(Title: {first_line}) {rest}\n")
  return "".join(lines)
