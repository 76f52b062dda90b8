"""Tests for chunked per-token log-probs against the full-logits computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.rl.logprobs import chunked_token_logprobs


def _naive(hidden, unembedding, targets):
  logits = jnp.einsum("bld,dv->blv", hidden.astype(jnp.float32), unembedding.astype(jnp.float32))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return logp, entropy


def _inputs(batch=2, length=13, dim=8, vocab=37, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(keys[0], (batch, length, dim))
  unembedding = jax.random.normal(keys[1], (dim, vocab)) / np.sqrt(dim)
  targets = jax.random.randint(keys[2], (batch, length), 0, vocab)
  return hidden, unembedding, targets


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 64])
def test_values_match_full_logits(chunk_size):
  hidden, unembedding, targets = _inputs()
  logp, entropy = jax.jit(chunked_token_logprobs, static_argnames=("chunk_size", "compute_entropy"))(
      hidden, unembedding, targets, chunk_size=chunk_size, compute_entropy=True)
  ref_logp, ref_entropy = _naive(hidden, unembedding, targets)
  assert logp.shape == targets.shape and logp.dtype == jnp.float32
  np.testing.assert_allclose(logp, ref_logp, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(entropy, ref_entropy, atol=1e-5, rtol=1e-5)
  no_entropy = chunked_token_logprobs(hidden, unembedding, targets, chunk_size=chunk_size)
  assert no_entropy[1] is None
  np.testing.assert_allclose(no_entropy[0], ref_logp, atol=1e-5, rtol=1e-5)


def test_gradients_match_full_logits():
  hidden, unembedding, targets = _inputs()
  weights = jax.random.normal(jax.random.key(7), targets.shape)

  def objective(fn):
    def f(h, w):
      logp, entropy = fn(h, w)
      return jnp.sum(weights * logp) + 0.3 * jnp.sum(entropy)
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  chunked = objective(lambda h, w: chunked_token_logprobs(h, w, targets, chunk_size=5,
                                                          compute_entropy=True))
  naive = objective(lambda h, w: _naive(h, w, targets))
  for got, want in zip(chunked(hidden, unembedding), naive(hidden, unembedding)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_accumulate_in_f32():
  hidden, unembedding, targets = _inputs(dim=64, vocab=50)
  hidden, unembedding = hidden.astype(jnp.bfloat16), unembedding.astype(jnp.bfloat16)
  logp, _ = chunked_token_logprobs(hidden, unembedding, targets, chunk_size=4)
  assert logp.dtype == jnp.float32
  # Same bf16 values, f32 products and sums: only summation order differs.
  ref_logp, _ = _naive(hidden, unembedding, targets)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-4, rtol=1e-4)
  grads = jax.grad(lambda h: chunked_token_logprobs(h, unembedding, targets, chunk_size=4)[0].sum())(hidden)
  assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads.astype(jnp.float32))))


def test_peak_temp_memory_below_full_logits():
  batch, length, dim, vocab = 2, 1024, 64, 2048
  shapes = (jax.ShapeDtypeStruct((batch, length, dim), jnp.float32),
            jax.ShapeDtypeStruct((dim, vocab), jnp.float32),
            jax.ShapeDtypeStruct((batch, length), jnp.int32))

  def compiled(fn):
    grad = jax.jit(jax.grad(lambda h, w, t: jnp.sum(fn(h, w, t)), argnums=(0, 1)))
    return grad.lower(*shapes).compile()

  naive = compiled(lambda h, w, t: _naive(h, w, t)[0])
  chunked = compiled(lambda h, w, t: chunked_token_logprobs(h, w, t, chunk_size=128)[0])
  full_logits_bytes = batch * length * vocab * 4
  naive_temp = naive.memory_analysis().temp_size_in_bytes
  chunked_temp = chunked.memory_analysis().temp_size_in_bytes
  assert naive_temp >= full_logits_bytes
  # Forward and backward keep a few chunk-sized [2, 128, 2048] buffers (2 MiB each), never a
  # full-logits one.
  assert chunked_temp < full_logits_bytes * 0.75, (chunked_temp, naive_temp)
  assert chunked_temp < naive_temp / 4, (chunked_temp, naive_temp)
  full_shape = f"[{batch},{length},{vocab}]"
  assert full_shape in naive.as_text()
  assert full_shape not in chunked.as_text()
