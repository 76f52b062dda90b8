"""The decode step's kernels against numpy references: cached attention, argmax, CDF sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.models.decoder import cached_attention
from memtrain_jax.sampling.logits import first_argmax, sample_inverse_cdf


def _reference_attention(q, k, v, mask):
  """float64 numpy: q [B,T,H,D]; k, v [B,S,K,D] (unrepeated); mask [B,T,S] -> [B,T,H,D]."""
  b, t, h, d = q.shape
  group = h // k.shape[2]
  out = np.zeros((b, t, h, d))
  for i in range(b):
    for j in range(t):
      keep = mask[i, j]
      for head in range(h):
        kh, vh = k[i, keep, head // group], v[i, keep, head // group]
        scores = kh @ q[i, j, head] / np.sqrt(d)
        p = np.exp(scores - scores.max())
        out[i, j, head] = (p / p.sum()) @ vh
  return out


@pytest.mark.parametrize("block_len", [1, 5])
def test_cached_attention_equals_reference_with_padding_and_partial_occupancy(block_len):
  rng = np.random.default_rng(block_len)
  batch, heads, kv_heads, dim, capacity = 3, 6, 2, 8, 24
  q = rng.standard_normal((batch, block_len, heads, dim))
  k = rng.standard_normal((batch, capacity, kv_heads, dim))
  v = rng.standard_normal((batch, capacity, kv_heads, dim))
  # Rows start at different slots (left padding); the block sits at slots [9, 9 + T), so the
  # slots after it are unoccupied. The mask is the one `forward_with_cache` builds.
  cache_start = np.array([0, 4, 8])
  write_index = 9
  slots = write_index + np.arange(block_len)
  key_slots = np.arange(capacity)
  mask = (key_slots[None, None, :] >= cache_start[:, None, None]) & (
      key_slots[None, None, :] <= slots[None, :, None])
  # Large values in the unoccupied slots must not leak into the result.
  k[:, 9 + block_len:] = 1e3
  v[:, 9 + block_len:] = -1e3
  want = _reference_attention(q, k, v, mask)
  # The cache layout: K transposed [B, K, D, S], V [B, K, S, D].
  k_t = jnp.asarray(k.transpose(0, 2, 3, 1), jnp.float32)
  v_hm = jnp.asarray(v.transpose(0, 2, 1, 3), jnp.float32)
  got = cached_attention(jnp.asarray(q, jnp.float32), k_t, v_hm, jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_first_argmax_is_jnp_argmax_including_ties():
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, size=(64, 300)).astype(np.float32)  # many ties
  x[5] = -np.inf
  x[6, :] = -np.inf
  x[6, 299] = 0.0
  x = jnp.asarray(x)
  got = first_argmax(x, jnp.max(x, axis=-1))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))


@pytest.mark.parametrize("block", [256, 16])
def test_inverse_cdf_sampling_matches_the_weights(block):
  vocab = 600  # not a multiple of the block: the last block is padded
  weights = np.zeros(vocab, np.float32)
  # Mass at block edges and in the last, partial block; zero-weight runs everywhere else.
  support = {0: 0.5, 15: 1.0, 16: 2.0, 255: 0.25, 256: 3.0, 300: 1e-3, 511: 1.5, 599: 0.75}
  for index, w in support.items():
    weights[index] = w
  draws = 40000
  rows = jnp.broadcast_to(jnp.asarray(weights), (draws, vocab))
  tokens = np.asarray(jax.jit(sample_inverse_cdf, static_argnums=2)(rows, jax.random.key(0),
                                                                     block))
  assert set(np.unique(tokens)) <= set(support)  # never a zero-weight index
  probs = weights / weights.sum()
  counts = np.bincount(tokens, minlength=vocab)
  sigma = np.sqrt(draws * probs * (1 - probs))
  np.testing.assert_array_less(np.abs(counts - draws * probs), 5 * sigma + 1)


def test_inverse_cdf_sampling_of_a_point_mass_and_of_leading_zeros():
  weights = np.zeros((3, 700), np.float32)
  weights[0, 699] = 1.0  # only the last entry
  weights[1, 0] = 1.0  # only the first
  weights[2, 300:302] = [1e-30, 1.0]  # a tiny weight next to the mass
  tokens = np.asarray(sample_inverse_cdf(jnp.asarray(weights), jax.random.key(3)))
  assert tokens[0] == 699 and tokens[1] == 0 and tokens[2] in (300, 301)
  # Many seeds: still only the supported entries.
  for seed in range(20):
    t = np.asarray(sample_inverse_cdf(jnp.asarray(weights), jax.random.key(seed)))
    assert t[0] == 699 and t[1] == 0 and t[2] in (300, 301)
