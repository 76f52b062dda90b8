"""Tests for chunked per-token log-probs against the full-logits computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.rl.logprobs import chunked_token_logprobs


def _naive(hidden, unembedding, targets):
  logits = jnp.einsum("bld,vd->blv", hidden.astype(jnp.float32), unembedding.astype(jnp.float32))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return logp, entropy


def _inputs(batch=2, length=13, dim=8, vocab=37, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(keys[0], (batch, length, dim))
  unembedding = jax.random.normal(keys[1], (vocab, dim)) / np.sqrt(dim)  # [V, D], the default
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
            jax.ShapeDtypeStruct((vocab, dim), jnp.float32),
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


def _masked_inputs(batch=3, length=21, dim=8, vocab=37, seed=3):
  hidden, unembedding, targets = _inputs(batch, length, dim, vocab, seed)
  rng = np.random.default_rng(seed)
  mask = np.zeros((batch, length), np.float32)
  for row in range(batch):  # a completion at the end of each row, of varying length
    mask[row, rng.integers(length // 3, length):] = 1.0
  return hidden, unembedding, targets, jnp.asarray(mask)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_loss_mask_values_and_gradients(chunk_size):
  """Only masked tokens are computed (the rest are 0); their values and gradients are exact."""
  hidden, unembedding, targets, mask = _masked_inputs()
  weights = jax.random.normal(jax.random.key(8), targets.shape)

  def objective(masked):
    def f(h, w):
      logp, entropy = chunked_token_logprobs(h, w, targets, chunk_size=chunk_size,
                                             compute_entropy=True,
                                             loss_mask=mask if masked else None)
      return jnp.sum(mask * weights * logp) + 0.3 * jnp.sum(mask * entropy), (logp, entropy)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (_, (logp, entropy)), grads = objective(True)(hidden, unembedding)
  ref_logp, ref_entropy = _naive(hidden, unembedding, targets)
  on = np.asarray(mask) > 0
  np.testing.assert_allclose(np.where(on, ref_logp, 0.0), logp, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.where(on, ref_entropy, 0.0), entropy, atol=1e-5, rtol=1e-5)
  (_, _), ref_grads = objective(False)(hidden, unembedding)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_empty_loss_mask_gives_zeros():
  hidden, unembedding, targets, _ = _masked_inputs()
  mask = jnp.zeros(targets.shape)
  f = lambda h, w: chunked_token_logprobs(h, w, targets, chunk_size=4, loss_mask=mask)[0].sum()
  value, grads = jax.value_and_grad(f, argnums=(0, 1))(hidden, unembedding)
  assert float(value) == 0.0
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)


def test_vocab_major_matches_and_skips_the_transpose():
  """A [V, D] (tied embedding) matrix gives the same values as its [D, V] transpose
  (`vocab_major=False`), and the gradient in its own layout."""
  hidden, embedding, targets, mask = _masked_inputs()
  unembedding = embedding.T

  def loss(w, vocab_major):
    logp, _ = chunked_token_logprobs(hidden, w, targets, chunk_size=5, loss_mask=mask,
                                     vocab_major=vocab_major)
    return jnp.sum(logp)

  np.testing.assert_allclose(loss(embedding, True), loss(unembedding, False), rtol=1e-6)
  grad_vd = jax.grad(loss)(embedding, True)
  assert grad_vd.shape == embedding.shape
  np.testing.assert_allclose(grad_vd, jax.grad(loss)(unembedding, False).T, atol=1e-6)


def test_stopped_entropy_leaves_the_logp_gradient():
  """An entropy behind stop_gradient (a symbolic-zero cotangent) contributes no gradient."""
  hidden, unembedding, targets, mask = _masked_inputs()

  def loss(h, w, entropy_weight):
    logp, entropy = chunked_token_logprobs(h, w, targets, chunk_size=4, compute_entropy=True,
                                           loss_mask=mask)
    return jnp.sum(logp) + entropy_weight * jnp.sum(entropy)

  stopped = lambda h, w: loss(h, w, 0.0) + 0.0 * jax.lax.stop_gradient(loss(h, w, 1.0))
  for got, want in zip(jax.grad(stopped, argnums=(0, 1))(hidden, unembedding),
                       jax.grad(loss, argnums=(0, 1))(hidden, unembedding, 0.0)):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("vocab_major", [False, True])
def test_bf16_weight_gradient_matches_f32_reference(vocab_major):
  """The bf16 backward (whose weight GEMM runs on a materialised transpose) against the f32
  gradient of the same bf16-rounded values, both weight layouts."""
  hidden, unembedding, targets = _inputs(dim=64, vocab=50, length=24)
  hidden, unembedding = hidden.astype(jnp.bfloat16), unembedding.astype(jnp.bfloat16)
  weights = jax.random.normal(jax.random.key(3), targets.shape)
  w_in = unembedding if vocab_major else unembedding.T

  def loss(h, w):
    logp, _ = chunked_token_logprobs(h, w, targets, chunk_size=8, vocab_major=vocab_major)
    return jnp.sum(weights * logp)

  d_h, d_w = jax.grad(loss, argnums=(0, 1))(hidden, w_in)
  ref_w = unembedding.astype(jnp.float32)
  ref_h, ref_dw = jax.grad(lambda h, w: jnp.sum(weights * _naive(h, w, targets)[0]),
                           argnums=(0, 1))(hidden.astype(jnp.float32), ref_w)
  ref_dw = ref_dw if vocab_major else ref_dw.T
  assert d_w.shape == w_in.shape
  # d_logits is rounded to bf16 before the GEMMs: errors of bf16 size, relative to the largest.
  for got, want in ((d_h, ref_h), (d_w, ref_dw)):
    got, want = np.asarray(got, np.float32), np.asarray(want)
    assert np.abs(got - want).max() < 2e-2 * np.abs(want).max()
