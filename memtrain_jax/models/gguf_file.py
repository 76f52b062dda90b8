"""A GGUF file's metadata and tensor table, read without parsing the tokenizer's arrays.

`gguf.GGUFReader` turns every metadata value into numpy views of a memmap, one per string of a
tokenizer's vocabulary and merges (SmolLM2: ~100k strings, 4.2-4.9 s on a 2-core AMD EPYC). Loading
weights needs only the scalar metadata and the tensor table, so here array values are stepped over
by their lengths (an `ArrayValue` keeps the element type and count), and each tensor's bytes are a
numpy view of one read-only memmap of the file (SmolLM2: 0.02-0.03 s). Plain ndarray views also
keep `gguf`'s dequantiser fast: it slices its input per group of rows, and slicing a memmap costs
more than the arithmetic (SmolLM2: 1.1 s against 2.6 s). The tokenizer, which does need
the arrays, is still converted through `gguf` (`gguf_io.gguf_tokenizer_files`, once per file).

Format (ggml's docs/gguf.md): magic "GGUF", version (2 or 3), tensor count, metadata count (u64);
metadata as (string key, u32 type, value); tensor infos as (string name, u32 n_dims, u64 dims
fastest first, u32 ggml type, u64 offset); then the tensor data, from the next multiple of
`general.alignment` (default 32). Strings are a u64 byte length and UTF-8 bytes. Little-endian.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


@dataclasses.dataclass(frozen=True)
class ArrayValue:
  """An array-valued metadata field: its element type (GGUF value type) and length; the elements
  are not read."""
  element_type: int
  length: int

  def __len__(self) -> int:
    return self.length


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
  name: str
  tensor_type: Any  # gguf.GGMLQuantizationType
  shape: tuple[int, ...]  # numpy order: the file's dims, slowest first
  data: np.ndarray  # uint8 [*shape[:-1], bytes of one row], a view of the file


class _Cursor:
  def __init__(self, buf: memoryview):
    self.buf, self.pos = buf, 0

  def scalar(self, fmt: str):
    (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += struct.calcsize(fmt)
    return value

  def string(self) -> str:
    n = self.scalar("<Q")
    raw = bytes(self.buf[self.pos:self.pos + n])
    if len(raw) != n:
      raise struct.error("string runs past the end of the file")
    self.pos += n
    return raw.decode("utf-8")

  def value(self, value_type: int):
    if value_type in _SCALAR_FORMATS:
      return self.scalar(_SCALAR_FORMATS[value_type])
    if value_type == _STRING:
      return self.string()
    if value_type == _ARRAY:
      element_type, length = self.scalar("<I"), self.scalar("<Q")
      self.skip_elements(element_type, length)
      return ArrayValue(element_type, length)
    raise struct.error(f"unknown metadata value type {value_type}")

  def skip_elements(self, element_type: int, length: int) -> None:
    if element_type in _SCALAR_FORMATS:
      self.pos += length * struct.calcsize(_SCALAR_FORMATS[element_type])
    elif element_type == _STRING:
      unpack, buf, pos = struct.Struct("<Q").unpack_from, self.buf, self.pos
      for _ in range(length):
        pos += 8 + unpack(buf, pos)[0]
      self.pos = pos
    else:
      for _ in range(length):
        self.value(element_type)
    if self.pos > len(self.buf):
      raise struct.error("array runs past the end of the file")


class GGUFFile:
  """`fields` {key: int / float / bool / str / ArrayValue} and `tensors` [GGUFTensor] of a GGUF
  file (the names and value shapes `gguf.GGUFReader` gives, without the array contents)."""

  def __init__(self, path: str):
    import gguf  # for the ggml type table only

    data = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(memoryview(data))
    try:
      if bytes(cursor.buf[:4]) != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
      cursor.pos = 4
      version = cursor.scalar("<I")
      if version & 0xFFFF == 0:
        raise ValueError(f"{path}: a big-endian GGUF file; only little-endian files are read "
                         "(convert it with llama.cpp's gguf tools)")
      if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
      tensor_count, field_count = cursor.scalar("<Q"), cursor.scalar("<Q")
      self.fields: dict[str, Any] = {}
      for _ in range(field_count):
        key = cursor.string()
        self.fields[key] = cursor.value(cursor.scalar("<I"))
      infos = []
      for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        infos.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
    except (struct.error, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: truncated or corrupt GGUF header ({e})") from None
    alignment = self.fields.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
      raise ValueError(f"{path}: general.alignment must be a power of two; got {alignment!r}")
    start = -(-cursor.pos // alignment) * alignment
    self.tensors: list[GGUFTensor] = []
    for name, dims, type_id, offset in infos:
      try:
        tensor_type = gguf.GGMLQuantizationType(type_id)
      except ValueError:
        raise ValueError(f"{path}: tensor {name} has unknown ggml type {type_id}") from None
      block, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
      if not dims or dims[0] % block:
        raise ValueError(f"{path}: tensor {name}'s dims {dims} are not whole blocks of {block}")
      row_bytes = dims[0] // block * block_bytes
      rows = int(np.prod(dims[1:], dtype=np.int64))
      begin = start + offset
      if begin + rows * row_bytes > len(data):
        raise ValueError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
      view = np.asarray(data[begin:begin + rows * row_bytes])
      self.tensors.append(GGUFTensor(name, tensor_type, tuple(reversed(dims)),
                                     view.reshape(*reversed(dims[1:]), row_bytes)))
