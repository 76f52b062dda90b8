"""Logit parity with `transformers` (torch, CPU, float32) on tiny random checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models
from tests.hf_fixtures import hf_logits, make_tiny_checkpoint

pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory):
  path = make_tiny_checkpoint(request.param, str(tmp_path_factory.mktemp(request.param)))
  return request.param, path


def _tokens(vocab, batch, length, seed=0):
  return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).astype(np.int32)


def test_config_matches_hf(tiny):
  kind, path = tiny
  config, _ = models.load_pretrained(path)
  hf = json.load(open(os.path.join(path, "config.json")))
  assert config.family == kind
  assert config.num_kv_heads == hf["num_key_value_heads"]
  assert config.tie_embeddings == hf["tie_word_embeddings"]
  assert config.qkv_bias == (kind == "qwen2")
  assert config.qk_norm == (kind == "qwen3")


def test_logits_match_transformers(tiny):
  _, path = tiny
  config, params = models.load_pretrained(path)
  tokens = _tokens(config.vocab_size, 2, 37)
  ours = np.asarray(models.forward(config, params, jnp.asarray(tokens)))
  ref = hf_logits(path, tokens)
  assert ours.shape == ref.shape
  np.testing.assert_array_less(np.abs(ours - ref).max(), 1e-4)


def test_padded_batch_matches_transformers(tiny):
  """Right-padded rows of different lengths: real positions match the unpadded reference."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  tokens = _tokens(config.vocab_size, 3, 29, seed=1)
  lengths = np.array([29, 17, 5])
  mask = (np.arange(29)[None, :] < lengths[:, None]).astype(np.int32)
  tokens = np.where(mask, tokens, 2)  # pad with the eos id: masks must not depend on token values
  ours = np.asarray(models.forward(config, params, jnp.asarray(tokens), segment_ids=jnp.asarray(mask)))
  ref = hf_logits(path, tokens, attention_mask=mask)
  for row, n in enumerate(lengths):
    np.testing.assert_array_less(np.abs(ours[row, :n] - ref[row, :n]).max(), 1e-4)


def test_packed_rows_equal_separate_rows(tiny):
  """Two sequences packed into one row with segment ids and restarting positions."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  a, b = _tokens(config.vocab_size, 1, 11, 2)[0], _tokens(config.vocab_size, 1, 7, 3)[0]
  packed = np.concatenate([a, b, [0, 0]])[None]
  seg = np.array([[1] * 11 + [2] * 7 + [0, 0]], np.int32)
  pos = np.array([list(range(11)) + list(range(7)) + [0, 0]], np.int32)
  out = np.asarray(models.forward(config, params, jnp.asarray(packed), positions=jnp.asarray(pos),
                                  segment_ids=jnp.asarray(seg)))
  ref_a = np.asarray(models.forward(config, params, jnp.asarray(a[None])))
  ref_b = np.asarray(models.forward(config, params, jnp.asarray(b[None])))
  np.testing.assert_allclose(out[0, :11], ref_a[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 11:18], ref_b[0], atol=1e-5)


def test_scan_and_remat_equal_unrolled(tiny):
  _, path = tiny
  config, params = models.load_pretrained(path)
  cfg_scan, params_scan = models.load_pretrained(path, scan_layers=True, remat=True)
  assert isinstance(params_scan["layers"], dict)
  tokens = jnp.asarray(_tokens(config.vocab_size, 2, 13, seed=4))
  np.testing.assert_allclose(np.asarray(models.forward(cfg_scan, params_scan, tokens)),
                             np.asarray(models.forward(config, params, tokens)), atol=1e-5)

  def grad(cfg):
    return jax.jit(jax.grad(lambda p: jnp.mean(models.forward(cfg, p, tokens) ** 2)))

  g_scan = grad(cfg_scan)(params_scan)
  g = models.stack_layers(grad(config)(params))
  for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_kv_cache_forward_equals_full_forward(tiny):
  """Prefill a left-padded batch into the cache, then decode one token at a time."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  tokens = _tokens(config.vocab_size, 2, 12, seed=5)
  pad = np.array([0, 4])  # row 1 is left-padded by 4 slots
  prompt = tokens[:, :8].copy()
  prompt[1, :4] = 0
  cache = models.init_cache(config, 2, 16)

  @jax.jit
  def run(params, block, cache, write_index):
    hidden, cache = models.forward_with_cache(config, params, block, cache, write_index=write_index,
                                              cache_start=jnp.asarray(pad))
    return models.logits_from_hidden(config, params, hidden[:, -1]), cache

  logits, cache = run(params, jnp.asarray(prompt), cache, 0)
  steps = [logits]
  for t in range(8, 12):
    logits, cache = run(params, jnp.asarray(tokens[:, t:t + 1]), cache, t)
    steps.append(logits)
  for row in range(2):
    seq = tokens[row, pad[row]:]
    full = np.asarray(models.forward(config, params, jnp.asarray(seq[None])))[0]
    for i, step_logits in enumerate(steps):
      np.testing.assert_allclose(np.asarray(step_logits[row]), full[8 - pad[row] - 1 + i], atol=1e-4)


def test_prefill_into_an_empty_cache_skips_reading_it(tiny):
  """`empty_cache=True` (attention over the block alone) gives the same hidden states and the
  same cache as attending over the whole, still empty, capacity; left padding included."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  prompt = _tokens(config.vocab_size, 2, 11, seed=7)
  start = jnp.asarray([0, 5])
  run = jax.jit(lambda params, empty: models.forward_with_cache(
      config, params, jnp.asarray(prompt), models.init_cache(config, 2, 11),
      write_index=jnp.int32(0), cache_start=start, empty_cache=empty), static_argnums=1)
  (h_skip, c_skip), (h_full, c_full) = run(params, True), run(params, False)
  for row, first in enumerate([0, 5]):  # padded positions have no defined output
    np.testing.assert_allclose(np.asarray(h_skip[row, first:]), np.asarray(h_full[row, first:]),
                               atol=1e-5)
  for a, b in zip(jax.tree.leaves(c_skip), jax.tree.leaves(c_full)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_bfloat16_compute_is_close(tiny):
  _, path = tiny
  config, params = models.load_pretrained(path)
  cfg16, params16 = models.load_pretrained(path, dtype="bfloat16")
  assert jax.tree.leaves(params16)[0].dtype == jnp.bfloat16
  tokens = jnp.asarray(_tokens(config.vocab_size, 1, 9, seed=6))
  out16 = np.asarray(models.forward(cfg16, params16, tokens))
  out32 = np.asarray(models.forward(config, params, tokens))
  assert out16.dtype == np.float32  # logits are always float32
  assert np.abs(out16 - out32).max() < 0.1 * np.abs(out32).max() + 0.05


def test_causal_block_attention_equals_full_attention():
  """Skipping the key blocks above the diagonal changes nothing (packed segments included)."""
  from memtrain_jax.models import decoder
  rng = np.random.default_rng(7)
  b, t, h, kv, d = 2, 300, 4, 2, 8
  q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.float32)
  seg = np.ones((b, t), np.int32)
  seg[1, 170:] = 2  # two packed rows in the second line
  seg[1, 290:] = 0  # and padding
  idx = np.arange(t)
  mask = jnp.asarray((seg[:, :, None] == seg[:, None, :]) & (idx[:, None] >= idx[None, :]))
  full = decoder.attention(q, k, v, mask)
  blocked = decoder.causal_attention(q, k, v, mask, block=64)
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(full), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_matmul_gradients_match_float64(dtype):
  """`decoder._matmul` (the hand-written VJP behind every projection): x [N, K] times the
  [M, K] weight (output axis first); output and both cotangents against float64 NumPy, with f32
  weights. The weight's cotangent comes back float32 whatever the compute dtype, and the bf16 path
  (which materialises d_y^T for the fast GEMM) is the same math. One row too (bf16 pads it)."""
  from memtrain_jax.models import decoder
  rng = np.random.default_rng(11)
  for n, k, m in ((24, 40, 56), (1, 40, 56)):
    x32 = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    d_y32 = rng.standard_normal((n, m)).astype(np.float32)
    x, d_y = jnp.asarray(x32, dtype), jnp.asarray(d_y32, dtype)
    y, vjp = jax.vjp(decoder._matmul, x, jnp.asarray(w))
    d_x, d_w = vjp(d_y)
    assert y.shape == (n, m) and d_w.shape == (m, k)
    assert y.dtype == dtype and d_x.dtype == dtype and d_w.dtype == jnp.float32
    # The reference sees the operands as the compute dtype rounds them.
    xr, wr, dyr = (np.asarray(jnp.asarray(a, dtype).astype(jnp.float32), np.float64)
                   for a in (x32, w, d_y32))
    scale = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16 rounds the outputs to 8 bits
    for got, want in ((y, xr @ wr.T), (d_x, dyr @ wr), (d_w, dyr.T @ xr)):
      got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
      assert np.abs(got - want).max() <= scale * np.abs(want).max(), (got - want)
    if dtype == jnp.bfloat16:
      # d_w is accumulated and returned in f32, not rounded to bf16.
      assert np.abs(np.asarray(d_w, np.float64) - dyr.T @ xr).max() < 1e-4 * np.abs(dyr.T @ xr).max()


def test_bfloat16_compute_with_float32_params_trains_close_to_float32(tiny):
  """Mixed precision as the trainer runs it: f32 parameters, bf16 compute. Logits and the
  gradient of a loss stay close to the f32 model's, and every gradient is f32."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  mixed = config.replace(compute_dtype="bfloat16")
  tokens = jnp.asarray(_tokens(config.vocab_size, 2, 12, seed=3))

  def loss(cfg, p):
    logp = jax.nn.log_softmax(models.forward(cfg, p, tokens)[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

  loss32, grads32 = jax.value_and_grad(lambda p: loss(config, p))(params)
  loss16, grads16 = jax.value_and_grad(lambda p: loss(mixed, p))(params)
  assert abs(float(loss16) - float(loss32)) < 0.02 * abs(float(loss32))
  g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
  g16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  cosine = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
  assert cosine > 0.99, cosine


def test_compute_params_copy_gives_the_same_bf16_forward(tiny):
  """The rollouts' bf16 copy of f32 master weights: matrices narrowed, vectors kept, and the
  forward (full and cached) bit-identical to the one that casts at each use."""
  _, path = tiny
  config, params = models.load_pretrained(path)
  mixed = config.replace(compute_dtype="bfloat16")
  copy = models.compute_params(mixed, params)
  assert copy["embed"].dtype == jnp.bfloat16 and copy["final_norm"].dtype == jnp.float32
  assert copy["layers"][0]["wq"].dtype == jnp.bfloat16
  assert copy["layers"][0]["attn_norm"].dtype == jnp.float32
  assert models.compute_params(config, params)["embed"].dtype == jnp.float32  # f32 compute: no-op
  tokens = jnp.asarray(_tokens(config.vocab_size, 2, 10, seed=4))
  np.testing.assert_array_equal(np.asarray(models.forward(mixed, copy, tokens)),
                                np.asarray(models.forward(mixed, params, tokens)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_cache_write_equals_dynamic_update_slice(dtype):
  """The cache write (through uint16 bits for 16-bit floats on CPU) stores exactly the update."""
  from memtrain_jax.models import decoder
  rng = np.random.default_rng(5)
  cache = jnp.asarray(rng.standard_normal((2, 3, 4, 10)), dtype)
  update = jnp.asarray(rng.standard_normal((2, 3, 4, 1)), jnp.float32)
  index = (jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.int32(7))
  got = jax.jit(decoder._cache_write)(cache, update, index)
  want = jax.lax.dynamic_update_slice(cache, update.astype(dtype), index)
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert not np.array_equal(np.asarray(got, np.float32), np.asarray(cache, np.float32))
