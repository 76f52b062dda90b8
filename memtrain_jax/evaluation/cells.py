"""Finished evaluation cells on disk, so that an interrupted evaluation resumes where it stopped.

A cell is one (model, task, mode, length or data set) result. Each is written as it completes, as
<workdir>/cells/<key>.json with its per-question records beside it in
<workdir>/predictions/<key>.jsonl (both atomically: a crash leaves the old file or none). A cell
carries the fingerprint of every setting that decides its numbers; a re-run skips the cells whose
fingerprint matches and recomputes the others, so changing a field redoes only what it affects.

The workdir may be a local directory or a `gs://` (or other etils.epath) URL. On a multi-process
job only process 0 uses a CellStore (see `runner.run_eval`); `record` builds a cell's record
without writing it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping

from etils import epath

from memtrain_jax import paths

CELLS_DIR = "cells"
PREDICTIONS_DIR = "predictions"


def fingerprint(settings: Mapping) -> str:
  """A short stable hash of JSON-able settings."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_atomic(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file beside it: readers see the old file or
  the new one, never a part (on object stores the rename is a copy, and an object is whole)."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)


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


def relative_predictions_path(key: str) -> str:
  """Where a cell's per-question records live, relative to the workdir (its record says so)."""
  return f"{PREDICTIONS_DIR}/{key}.jsonl"


def record(spec: CellSpec, result: Mapping) -> dict:
  """The cell's record as `CellStore.save` writes it (and `load` reads it back)."""
  return {"key": spec.key, "task": spec.task, "model": spec.model, "column": spec.column,
          "mode": spec.mode, **result, "fingerprint": spec.fingerprint,
          "predictions": relative_predictions_path(spec.key)}


class CellStore:
  """Reads and writes finished cells under a workdir (a local path or an epath URL)."""

  def __init__(self, workdir: epath.PathLike):
    self.workdir = paths.as_path(workdir)
    self.cells_dir = self.workdir / CELLS_DIR
    self.predictions_dir = self.workdir / PREDICTIONS_DIR

  def _cell_path(self, key: str) -> epath.Path:
    return self.cells_dir / f"{key}.json"

  def predictions_path(self, key: str) -> epath.Path:
    return self.workdir / relative_predictions_path(key)

  def load(self, spec: CellSpec) -> dict | None:
    """The saved result of `spec`, or None when missing, unreadable or computed differently."""
    path = self._cell_path(spec.key)
    try:
      if not path.exists():
        return None
      saved = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
      return None
    if saved.get("fingerprint") != spec.fingerprint:
      return None
    if not (self.workdir / saved.get("predictions", "")).exists():
      return None
    return saved

  def save(self, spec: CellSpec, result: Mapping, per_question: Iterable[Mapping]) -> dict:
    """Writes the per-question records, then the cell (last: it marks the cell as done)."""
    self.cells_dir.mkdir(parents=True, exist_ok=True)
    self.predictions_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in per_question)
    write_atomic(self.predictions_path(spec.key), lines)
    out = record(spec, result)
    write_atomic(self._cell_path(spec.key), json.dumps(out, indent=2, ensure_ascii=False))
    return out
