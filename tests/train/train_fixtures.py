"""Tiny model, optimizer settings and synthetic packed batches shared by the train tests.

Also imported by `tiny_train_script.py` (run in a subprocess), so it must not import pytest.
"""

import math

import ml_collections
import numpy as np

from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.rl.packing import PackedBatch, PackingConfig, pack_rows

# 4 query heads over 2 KV heads: both divide the 2-way 'tensor' axis of the 2x2x2 test mesh.
TINY_MODEL = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """The `optim` section with a learning rate large enough to move a tiny model visibly."""
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=2, schedule="constant", decay_steps=0, min_lr_ratio=0.0,
      weight_decay=0.01, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8))
  cfg.update(overrides)
  return cfg


def synthetic_rows(seed: int, num_rows: int = 6, vocab: int = 64, max_prompt: int = 7,
                   max_completion: int = 6) -> InteractionRows:
  """Random rows whose old log-probs sit near a uniform policy (ratios close to 1)."""
  rng = np.random.default_rng(seed)
  prompt_lens = rng.integers(2, max_prompt + 1, num_rows)
  completion_lens = rng.integers(1, max_completion + 1, num_rows)
  uniform = -math.log(vocab)
  return InteractionRows(
      prompt_tokens=[rng.integers(0, vocab, n).astype(np.int32) for n in prompt_lens],
      completion_tokens=[rng.integers(0, vocab, n).astype(np.int32) for n in completion_lens],
      completion_logprobs=[(uniform + 0.05 * rng.standard_normal(n)).astype(np.float32)
                           for n in completion_lens],
      sample_id=np.arange(num_rows, dtype=np.int32), group_id=np.zeros(num_rows, np.int32),
      trajectory_id=np.arange(num_rows, dtype=np.int32), step=np.zeros(num_rows, np.int32),
      kind=np.full(num_rows, RowKind.MEMORY_UPDATE, np.int8),
      advantage=rng.standard_normal(num_rows).astype(np.float32))


def synthetic_packed(seed: int, seq_len: int = 16, micro_batch_size: int = 2,
                     num_micro_batches_multiple: int = 1, num_rows: int = 6) -> PackedBatch:
  return pack_rows(synthetic_rows(seed, num_rows=num_rows),
                   PackingConfig(seq_len=seq_len, micro_batch_size=micro_batch_size,
                                 num_micro_batches_multiple=num_micro_batches_multiple))


def fixed_lines(seed: int, num_lines: int, seq_len: int = 16) -> dict[str, np.ndarray]:
  """`num_lines` packed lines as [num_lines, seq_len] arrays (to regroup into micro-batches)."""
  packed = synthetic_packed(seed, seq_len=seq_len, micro_batch_size=1, num_rows=3 * num_lines)
  lines = {name: value.reshape(-1, seq_len) for name, value in packed.as_dict().items()}
  if lines["tokens"].shape[0] < num_lines:
    raise ValueError("not enough packed lines; raise num_rows")
  return {name: value[:num_lines] for name, value in lines.items()}
