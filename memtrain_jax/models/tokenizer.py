"""Tokenizers through `transformers.AutoTokenizer`, from an HF directory or a GGUF file.

A GGUF's tokenizer is converted once (torch-free) and cached as a normal tokenizer directory
under $MEMTRAIN_CACHE (default ~/.cache/memtrain_jax), keyed by the file's path, size and mtime.
Tokenizers without a pad token get pad = eos: masks in this project come from lengths, never from
`token == pad_id`, so sharing the id is safe.
"""

from __future__ import annotations

import hashlib
import os

from memtrain_jax.models.loading import checkpoint_kind, resolve_model_path


def cache_dir() -> str:
  return os.path.expanduser(os.environ.get("MEMTRAIN_CACHE", "~/.cache/memtrain_jax"))


def _gguf_tokenizer_dir(path: str) -> str:
  from memtrain_jax.models.gguf_io import gguf_tokenizer_files

  st = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
  out = os.path.join(cache_dir(), "tokenizers", key)
  if not os.path.exists(os.path.join(out, "tokenizer_config.json")):
    tmp = f"{out}.tmp{os.getpid()}"
    gguf_tokenizer_files(path, tmp)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
      os.replace(tmp, out)  # atomic: concurrent processes never see half a directory
    except OSError:
      if not os.path.exists(os.path.join(out, "tokenizer_config.json")):
        raise
  return out


def load_tokenizer(path: str):
  """A `transformers` tokenizer with its chat template, from an HF directory or a .gguf file."""
  from transformers import AutoTokenizer

  resolved = resolve_model_path(path)
  kind = checkpoint_kind(resolved)
  directory = resolved if kind == "hf" else _gguf_tokenizer_dir(resolved)
  tokenizer = AutoTokenizer.from_pretrained(directory)
  if tokenizer.pad_token is None and tokenizer.eos_token is not None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer
