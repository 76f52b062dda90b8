"""Loads a retrieval corpus from JSONL: one passage per line.

Accepted rows: the wiki-18 form `{"id": ..., "contents": "\\"Title\\"\\ntext"}` and the plain
`{"title": ..., "text": ...}` form (converted to `contents`). Rows without an id get their line
number, which is also what the Search-R1 FAISS index uses as the document id.
"""

from __future__ import annotations

import dataclasses
import json
import os

from memtrain_jax.retrieval.passage import contents_from_title_text


@dataclasses.dataclass(frozen=True)
class CorpusDoc:
  doc_id: str
  contents: str


def doc_from_row(row: object, line_number: int) -> CorpusDoc:
  if not isinstance(row, dict):
    raise ValueError(f"line {line_number}: expected a JSON object, got {type(row).__name__}")
  if isinstance(row.get("contents"), str):
    contents = row["contents"]
  elif isinstance(row.get("title"), str) and isinstance(row.get("text"), str):
    contents = contents_from_title_text(row["title"], row["text"])
  else:
    raise ValueError(
        f'line {line_number}: a corpus row needs a string "contents", or string "title" and '
        f'"text"; got keys {sorted(row)}')
  doc_id = row.get("id", line_number)
  return CorpusDoc(doc_id=str(doc_id), contents=contents)


def load_corpus(path: str | os.PathLike[str]) -> list[CorpusDoc]:
  docs = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {line_number} is not valid JSON: {e}") from e
      docs.append(doc_from_row(row, line_number))
  if not docs:
    raise ValueError(f"{path}: the corpus is empty")
  return docs
