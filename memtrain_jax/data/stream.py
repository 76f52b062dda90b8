"""Resumable, epoch-shuffled reading of a built data set.

A training checkpoint stores `stream.state()`; `restore(state)` continues at
exactly the next document. The order of epoch e is a permutation drawn from
(seed, e), so it does not depend on how many documents were read before.
"""

import fnmatch
import json

import numpy as np
from etils import epath

from memtrain_jax import paths
from memtrain_jax.data.pipeline import SHARD_PATTERN


def shard_paths(data_dir: epath.PathLike) -> list[epath.Path]:
  """The `DocumentStream` shards in `data_dir` (a local path or a URL), in name order."""
  directory = paths.as_path(data_dir)
  if not directory.is_dir():
    return []
  pattern = SHARD_PATTERN.replace('{:05d}', '*')
  return sorted((p for p in directory.iterdir() if fnmatch.fnmatchcase(p.name, pattern)),
                key=lambda p: p.name)


def write_single_shard(rows, out_dir: epath.PathLike, stats: dict) -> dict:
  """Writes JSON rows as the one shard a `DocumentStream` reads, plus stats.json; returns stats.

  For data sets built outside the MemTrain pipeline (task-RL documents and search tasks).
  `out_dir` may be a local path or a URL such as gs://bucket/data.
  """
  rows = list(rows)
  if not rows:
    raise ValueError(f'no documents to write to {out_dir}')
  out = paths.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with (out / SHARD_PATTERN.format(0)).open('w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')
  stats = {'documents': len(rows), **stats}
  (out / 'stats.json').write_text(json.dumps(stats, indent=2), encoding='utf-8')
  return stats


class DocumentStream:
  """Endless iterator over the documents in `data_dir`, epoch by epoch.

  `data_dir` may be a local path or a URL such as gs://bucket/data (read through epath).
  """

  def __init__(self, data_dir: epath.PathLike, seed: int = 0, shuffle: bool = True):
    self.seed = seed
    self.shuffle = shuffle
    self._shards = shard_paths(data_dir)
    # (shard, byte offset) of every line: documents are read on demand.
    self._locations: list[tuple[int, int]] = []
    for shard_index, path in enumerate(self._shards):
      with path.open('rb') as f:
        offset = 0
        for line in f:
          if line.strip():
            self._locations.append((shard_index, offset))
          offset += len(line)
    if not self._locations:
      raise ValueError(f'no documents in {data_dir}')
    self.epoch = 0
    self.position = 0
    self._order = self._epoch_order(0)

  def __len__(self) -> int:
    return len(self._locations)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(len(self._locations))
    return np.random.default_rng([self.seed, epoch]).permutation(
        len(self._locations))

  def _read(self, document_index: int) -> dict:
    shard_index, offset = self._locations[document_index]
    with self._shards[shard_index].open('rb') as f:
      f.seek(offset)
      return json.loads(f.readline().decode('utf-8'))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.position >= len(self._order):
      self.epoch += 1
      self.position = 0
      self._order = self._epoch_order(self.epoch)
    document = self._read(int(self._order[self.position]))
    self.position += 1
    return document

  def state(self) -> dict:
    """JSON-serialisable position to store in a training checkpoint."""
    return {'epoch': self.epoch, 'position': self.position,
            'seed': self.seed, 'shuffle': self.shuffle,
            'num_documents': len(self._locations)}

  def restore(self, state: dict) -> None:
    """Continues from a `state()`; refuses one from a different data set."""
    if state['num_documents'] != len(self._locations):
      raise ValueError(
          f'state is for {state["num_documents"]} documents, this data set '
          f'has {len(self._locations)}')
    self.seed = int(state['seed'])
    self.shuffle = bool(state['shuffle'])
    self.epoch = int(state['epoch'])
    self.position = int(state['position'])
    self._order = self._epoch_order(self.epoch)
