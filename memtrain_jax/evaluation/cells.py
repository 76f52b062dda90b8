"""Finished evaluation cells on disk, so that an interrupted evaluation resumes where it stopped.

A cell is one (model, task, mode, length or data set) result. Each is written as it completes, as
<workdir>/cells/<key>.json with its per-question records beside it in
<workdir>/predictions/<key>.jsonl (both atomically: a crash leaves the old file or none). A cell
carries the fingerprint of every setting that decides its numbers; a re-run skips the cells whose
fingerprint matches and recomputes the others, so changing a field redoes only what it affects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping


def fingerprint(settings: Mapping) -> str:
  """A short stable hash of JSON-able settings."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """What one cell computes; `key` names its files, `settings` decide its numbers."""
  key: str
  task: str  # 'long_qa' or 'search_qa'
  model: str
  column: str  # the length label or the data set name
  mode: str  # memory_agent / full_context for long QA, 'search' for search QA
  settings: Mapping

  @property
  def fingerprint(self) -> str:
    return fingerprint(self.settings)


class CellStore:
  """Reads and writes finished cells under a workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.cells_dir = os.path.join(workdir, "cells")
    self.predictions_dir = os.path.join(workdir, "predictions")
    os.makedirs(self.cells_dir, exist_ok=True)
    os.makedirs(self.predictions_dir, exist_ok=True)

  def _cell_path(self, key: str) -> str:
    return os.path.join(self.cells_dir, f"{key}.json")

  def predictions_path(self, key: str) -> str:
    return os.path.join(self.predictions_dir, f"{key}.jsonl")

  def load(self, spec: CellSpec) -> dict | None:
    """The saved result of `spec`, or None when missing, unreadable or computed differently."""
    try:
      with open(self._cell_path(spec.key), encoding="utf-8") as f:
        record = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      return None
    if record.get("fingerprint") != spec.fingerprint:
      return None
    if not os.path.exists(os.path.join(self.workdir, record.get("predictions", ""))):
      return None
    return record

  def save(self, spec: CellSpec, result: Mapping, per_question: Iterable[Mapping]) -> dict:
    """Writes the per-question records, then the cell (last: it marks the cell as done)."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in per_question)
    _write_atomic(self.predictions_path(spec.key), lines)
    record = {"key": spec.key, "task": spec.task, "model": spec.model, "column": spec.column,
              "mode": spec.mode, **result, "fingerprint": spec.fingerprint,
              "predictions": os.path.relpath(self.predictions_path(spec.key), self.workdir)}
    _write_atomic(self._cell_path(spec.key), json.dumps(record, indent=2, ensure_ascii=False))
    return record
