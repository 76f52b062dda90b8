"""The decode step's kernels against numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.models.decoder import cached_attention


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
