"""Causal attention that skips masked key blocks: exact against full attention, values and
gradients, for packed segments, shared-prompt branches and padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models
from memtrain_jax.models import block_attention, decoder
from tests.hf_fixtures import make_tiny_checkpoint


def _packed_mask(seg: np.ndarray, branch: np.ndarray | None = None) -> np.ndarray:
  t = seg.shape[1]
  idx = np.arange(t)
  mask = (seg[:, :, None] == seg[:, None, :]) & (idx[:, None] >= idx[None, :])
  if branch is not None:
    mask &= (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
  return mask


def _random_line(rng, batch: int, t: int):
  """Segments of random lengths, some with shared-prompt branches, then padding (segment 0)."""
  seg = np.zeros((batch, t), np.int32)
  branch = np.zeros((batch, t), np.int32)
  for b in range(batch):
    pos, s = 0, 1
    while pos < t - 8:
      length = int(rng.integers(8, t // 2))
      end = min(pos + length, t - int(rng.integers(0, 6)))
      seg[b, pos:end] = s
      if rng.random() < 0.5 and end - pos > 12:  # a trunk then two branches
        cut = pos + (end - pos) // 2
        mid = cut + (end - cut) // 2
        branch[b, cut:mid], branch[b, mid:end] = 1, 2
      pos, s = end, s + 1
  return seg, branch


def test_first_key_blocks_of_a_known_layout():
  seg = np.ones((2, 300), np.int32)
  seg[0, 100:] = 2
  seg[0, 250:] = 3
  seg[1, 170:] = 2
  seg[1, 290:] = 0
  firsts = block_attention.first_key_blocks(jnp.asarray(_packed_mask(seg)), 64)
  # Block 3 (192-255): row 0 sees from 100 (block 1), row 1 from 170 (block 2): the batch's min.
  np.testing.assert_array_equal(np.asarray(firsts), [0, 0, 0, 1, 2])


@pytest.mark.parametrize("i", range(20))
def test_first_block_choices_cover_within_twice_the_keys(i):
  choices = block_attention.first_block_choices(i)
  assert choices == sorted(set(choices)) and choices[0] == 0 and choices[-1] == i
  for first in range(i + 1):
    lo = max(c for c in choices if c <= first)
    assert i - lo + 1 <= 2 * (i - first + 1)


@pytest.mark.parametrize("seed,block", [(0, 32), (1, 64), (2, 16)])
def test_values_and_gradients_equal_full_attention(seed, block):
  rng = np.random.default_rng(seed)
  b, t, h, kv, d = 2, 200, 4, 2, 8
  q, k, v, cotangent = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                        for shape in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d), (b, t, h, d)))
  mask = jnp.asarray(_packed_mask(*_random_line(rng, b, t)))
  firsts = block_attention.first_key_blocks(mask, block)
  assert int(firsts.max()) > 0  # the layout does skip blocks

  def skipping(q, k, v):
    return block_attention.skipping_causal_attention(q, k, v, mask, firsts, block)

  full = lambda q, k, v: decoder.attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(jax.jit(skipping)(q, k, v)),
                             np.asarray(full(q, k, v)), atol=1e-5)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
  got = jax.jit(jax.grad(loss(skipping), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(full), argnums=(0, 1, 2))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, err_msg=f"d{name}")


def test_a_stale_first_block_would_be_wrong():
  """The skipped keys matter when visible: claiming a later first block than the mask's changes
  the output (so the equality tests above exercise the skipping, not a no-op)."""
  rng = np.random.default_rng(4)
  b, t, h, kv, d = 1, 128, 2, 1, 8
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d)))
  mask = jnp.asarray(_packed_mask(np.ones((b, t), np.int32)))
  right = block_attention.skipping_causal_attention(q, k, v, mask,
                                                    block_attention.first_key_blocks(mask, 32), 32)
  wrong = block_attention.skipping_causal_attention(q, k, v, mask,
                                                    jnp.asarray([0, 1, 2, 3], jnp.int32), 32)
  np.testing.assert_allclose(np.asarray(right), np.asarray(decoder.attention(q, k, v, mask)),
                             atol=1e-5)
  assert float(jnp.abs(wrong - right).max()) > 1e-2


def test_bf16_is_close_to_the_f32_reference():
  rng = np.random.default_rng(5)
  b, t, h, kv, d = 1, 160, 4, 2, 16
  q, k, v, cotangent = (rng.standard_normal(shape).astype(np.float32)
                        for shape in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d), (b, t, h, d)))
  mask = jnp.asarray(_packed_mask(*_random_line(rng, b, t)))
  firsts = block_attention.first_key_blocks(mask, 32)

  def loss(q, k, v):
    out = block_attention.skipping_causal_attention(q, k, v, mask, firsts, 32)
    return jnp.sum(out.astype(jnp.float32) * cotangent)

  to16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  got = jax.grad(loss, argnums=(0, 1, 2))(to16(q), to16(k), to16(v))
  ref = jax.grad(lambda q, k, v: jnp.sum(decoder.attention(q, k, v, mask) * cotangent),
                 argnums=(0, 1, 2))(*(jnp.asarray(to16(x), jnp.float32) for x in (q, k, v)))
  for g, w in zip(got, ref):
    assert g.dtype == jnp.bfloat16
    g, w = np.asarray(g, np.float32), np.asarray(w)
    assert np.abs(g - w).max() < 3e-2 * np.abs(w).max()


def test_packed_long_rows_equal_separate_rows(tmp_path):
  """Through the model: rows packed in a line longer than one attention block (so the skipping
  path runs) give the logits each row gives alone."""
  path = make_tiny_checkpoint("llama", str(tmp_path))
  config, params = models.load_pretrained(path)
  rng = np.random.default_rng(6)
  lengths = [150, 90, 60]
  rows = [rng.integers(0, config.vocab_size, n).astype(np.int32) for n in lengths]
  t = decoder.ATTENTION_BLOCK * 3
  tokens = np.zeros((1, t), np.int32)
  seg = np.zeros((1, t), np.int32)
  pos = np.zeros((1, t), np.int32)
  start = 0
  for i, row in enumerate(rows):
    tokens[0, start:start + len(row)] = row
    seg[0, start:start + len(row)] = i + 1
    pos[0, start:start + len(row)] = np.arange(len(row))
    start += len(row)
  packed = np.asarray(models.forward(config, params, jnp.asarray(tokens),
                                     positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
  start = 0
  for row in rows:
    alone = np.asarray(models.forward(config, params, jnp.asarray(row[None])))[0]
    np.testing.assert_allclose(packed[0, start:start + len(row)], alone, atol=1e-4)
    start += len(row)
