"""A small safetensors reader/writer on numpy memmaps (bfloat16 included, via ml_dtypes).

The `safetensors` package's numpy backend has no bfloat16, and loading through a framework would
put whole tensors on one device. The format is an 8-byte header length, a JSON header, then raw
little-endian bytes, so reading tensors lazily from a memmap is a few lines.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy access to the tensors of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header)")
      (header_len,) = struct.unpack("<Q", raw)
      try:
        header = json.loads(f.read(header_len))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header = header
    self._data_start = 8 + header_len
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only numpy view of the file (no copy until used)."""
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    begin, end = info["data_offsets"]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


class SafetensorsCheckpoint:
  """All tensors of a checkpoint directory: `model.safetensors` or a sharded index."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in sorted(set(weight_map.values()))}
      self._where = {name: files[fn] for name, fn in weight_map.items()}
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self._where = {name: f for name in f.keys()}
    else:
      found = sorted(os.listdir(directory))[:20]
      raise FileNotFoundError(
          f"{directory}: no model.safetensors or model.safetensors.index.json (found {found}); "
          "save the model with `save_pretrained(..., safe_serialization=True)`")

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)


def save_safetensors(path: str, tensors: Iterable[tuple[str, np.ndarray]],
                     metadata: dict | None = None) -> None:
  """Writes (name, array) pairs; arrays are only held one at a time after the header is built."""
  tensors = list(tensors)
  header, offset = {}, 0
  for name, arr in tensors:
    if arr.dtype not in _NAMES:
      raise ValueError(f"cannot save tensor {name} of dtype {arr.dtype}")
    size = arr.size * arr.dtype.itemsize
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for _, arr in tensors:
      f.write(np.ascontiguousarray(arr).tobytes())
