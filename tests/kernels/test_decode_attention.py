"""The CPU decode-attention kernel: float64 reference, XLA's attention, sharding, the setting."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import sharding
from memtrain_jax.config_lib import check_kernel_setting
from memtrain_jax.kernels import cpu_library
from memtrain_jax.kernels import decode_attention as kernel
from memtrain_jax.models import decoder
from memtrain_jax.sampling import sampler as sampler_lib
from tests.rollout_fixtures import greedy_decode_program, tiny_config, tiny_params


def _written(k_new, v_new, k_t, v, slot):
  """The caches with the token's K/V at `slot`, rounded to the caches' dtype (numpy)."""
  k_t, v = np.array(k_t), np.array(v)
  if 0 <= slot < k_t.shape[-1]:
    k_t[..., slot] = np.asarray(jnp.asarray(k_new, k_t.dtype))
    v[..., slot, :] = np.asarray(jnp.asarray(v_new, v.dtype))
  return k_t, v


def _reference(q, k_t, v, start, end):
  """float64 numpy: q [B,H,D] against slots [start[b], end) of k_t [B,K,D,S], v [B,K,S,D]."""
  q, k_t, v = (np.asarray(np.asarray(x, np.float32), np.float64) for x in (q, k_t, v))
  b, h, d = q.shape
  group = h // k_t.shape[1]
  out = np.zeros((b, h, d))
  for row in range(b):
    lo, hi = max(int(start[row]), 0), min(int(end), k_t.shape[-1])
    if hi <= lo:
      continue
    for head in range(h):
      keys = k_t[row, head // group, :, lo:hi]  # [D, L]
      scores = q[row, head] @ keys / np.sqrt(d)
      p = np.exp(scores - scores.max())
      out[row, head] = (p / p.sum()) @ v[row, head // group, lo:hi]
  return out


def _inputs(rng, batch, heads, kv_heads, head_dim, slots, q_dtype, cache_dtype):
  """q, k_new, v_new, k_t, v."""
  normal = lambda shape, dtype: jnp.asarray(rng.standard_normal(shape), dtype)
  return (normal((batch, heads, head_dim), q_dtype), normal((batch, kv_heads, head_dim), q_dtype),
          normal((batch, kv_heads, head_dim), q_dtype),
          normal((batch, kv_heads, head_dim, slots), cache_dtype),
          normal((batch, kv_heads, slots, head_dim), cache_dtype))


# Head dims 64 and 128 take the compiled-in paths, the others the generic one; groups of 1, 3 and
# 7 query heads per KV head (the register-blocked loops take up to 4 heads at a time, fewer with
# 16 vector registers or 128 dims, and the value sums of 128 dims in two halves with AVX2); rows
# of a block of slots (64 with AVX-512, 32 with AVX2, 16 with SSE) and more (a last partial block
# scored as a whole window that ends with it, or that reads past it) and of fewer; more and fewer
# (row, KV head) pairs than threads.
SHAPES = [  # batch, heads, kv_heads, head_dim, slots
    (4, 9, 3, 64, 200), (3, 12, 4, 128, 70), (2, 14, 2, 16, 130), (2, 14, 2, 64, 100),
    (5, 4, 4, 80, 65), (1, 2, 1, 32, 1)]


@pytest.mark.parametrize("cache_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_a_float64_reference(shape, cache_dtype):
  """A float32 q against a float32 or bfloat16 cache (q keeps its precision, where XLA's
  attention rounds it to the cache's dtype). The token's K/V land at `slot` and nowhere else."""
  batch, heads, kv_heads, head_dim, slots = shape
  rng = np.random.default_rng(sum(shape))
  q, k_new, v_new, k_t, v = _inputs(rng, *shape, jnp.float32, cache_dtype)
  slot = slots - 1 if slots < 10 else slots - 4
  # Rows starting at 0, in the middle, at the written slot, and after it (no slot: zeros).
  start = np.array([0, slot // 2, slot, slot + 1, 7][:batch], np.int32)
  start = np.minimum(start, slots)
  want_k_t, want_v = _written(k_new, v_new, k_t, v, slot)
  got, got_k_t, got_v = jax.jit(kernel.decode_attention)(q, k_new, v_new, k_t, v, start,
                                                         np.int32(slot))
  np.testing.assert_array_equal(np.asarray(got_k_t), want_k_t)
  np.testing.assert_array_equal(np.asarray(got_v), want_v)
  np.testing.assert_allclose(np.asarray(got), _reference(q, want_k_t, want_v, start, slot + 1),
                             atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("q_dtype,cache_dtype", [(jnp.float32, jnp.float32),
                                                 (jnp.bfloat16, jnp.float32),
                                                 (jnp.bfloat16, jnp.bfloat16)])
def test_matches_the_xla_attention_it_replaces(q_dtype, cache_dtype, head_dim):
  """The decoder's cache write and `cached_attention` over the decode mask: the same caches, and
  with a 16-bit q both round the probabilities to bf16 (and q * D^-1/2, inexact for D = 128, when
  the cache is bf16 too), so they agree to the output's rounding."""
  batch, heads, kv_heads, slots = 6, 9, 3, 96
  rng = np.random.default_rng(1)
  q, k_new, v_new, k_t, v = _inputs(rng, batch, heads, kv_heads, head_dim, slots, q_dtype,
                                    cache_dtype)
  start = rng.integers(0, 40, batch).astype(np.int32)
  slot = 79

  @jax.jit
  def xla_step(q, k_new, v_new, k_t, v):
    zero = jnp.zeros((), jnp.int32)
    k_t = decoder._cache_write(k_t, k_new[..., None], (zero, zero, zero, slot))
    v = decoder._cache_write(v, v_new[:, :, None], (zero, zero, slot, zero))
    slots_ = jnp.arange(slots)
    mask = ((slots_[None, :] >= start[:, None]) & (slots_[None, :] <= slot))[:, None, :]
    return decoder.cached_attention(q[:, None], k_t, v, mask)[:, 0], k_t, v

  xla, xla_k_t, xla_v = xla_step(q, k_new, v_new, k_t, v)
  got, got_k_t, got_v = jax.jit(kernel.decode_attention)(q, k_new, v_new, k_t, v, start,
                                                         np.int32(slot))
  np.testing.assert_array_equal(np.asarray(got_k_t), np.asarray(xla_k_t))
  np.testing.assert_array_equal(np.asarray(got_v), np.asarray(xla_v))
  assert got.dtype == q_dtype
  got, xla = np.asarray(got, np.float32), np.asarray(xla, np.float32)
  if q_dtype == jnp.float32:
    np.testing.assert_allclose(got, xla, atol=1e-6, rtol=1e-6)
  else:
    # Only the float32 sums' order differs, so the bf16 outputs are the same but for a rare
    # rounding flip (unrounded probabilities would leave about a third of them different).
    np.testing.assert_allclose(got, xla, atol=2 ** -7, rtol=2 ** -7)
    assert np.mean(got == xla) >= 0.99


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decode_steps_of_the_decoder_match_xla_attention(scan_layers):
  """`forward_with_cache` with the kernel, step by step in one jitted loop, against XLA's; the
  layers unrolled or under `lax.scan` (a stacked cache)."""
  config = tiny_config(num_heads=6, num_kv_heads=2, head_dim=16, scan_layers=scan_layers)
  params = tiny_params(config)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, config.vocab_size, (3, 12)), jnp.int32)
  run = greedy_decode_program(config, params, tokens, jnp.asarray([0, 4, 9], jnp.int32), steps=5)
  (ours, _, _), (xla, _, _) = run(params, kernel.decode_attention), run(params)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(xla), atol=1e-5)
  # The kernel is really in the program.
  assert kernel.TARGET_NAME in run.lower(params, kernel.decode_attention).as_text()
  assert kernel.TARGET_NAME not in run.lower(params).as_text()


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_kernel_equals_one_device(mesh_shape):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(mesh_shape)
  rng = np.random.default_rng(2)
  inputs = _inputs(rng, 8, 8, 2, 16, 40, jnp.float32, jnp.float32)
  start = rng.integers(0, 30, 8).astype(np.int32)
  single = jax.jit(kernel.decode_attention)(*inputs, start, np.int32(35))
  sharded = jax.jit(sampler_lib.shard_decode_attention(kernel.decode_attention, mesh))(
      *inputs, start, np.int32(35))
  for a, b in zip(sharded, single):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bad_shapes_and_dtypes_are_refused():
  rng = np.random.default_rng(3)
  inputs = _inputs(rng, 2, 6, 4, 16, 10, jnp.float32, jnp.float32)  # 4 KV heads do not divide 6
  with pytest.raises(ValueError, match=r"q \[B, H, D\], k_new and v_new \[B, K, D\]"):
    kernel.decode_attention(*inputs, np.zeros(2, np.int32), 5)
  q, k_new, v_new, k_t, v = _inputs(rng, 2, 4, 2, 16, 10, jnp.float32, jnp.float32)
  with pytest.raises(ValueError, match=r"got q \(2, 4, 16\), k_new \(2, 2, 15\)"):
    kernel.decode_attention(q, k_new[..., 1:], v_new, k_t, v, np.zeros(2, np.int32), 5)
  inputs = _inputs(rng, 2, 4, 2, 16, 10, jnp.float16, jnp.float32)
  with pytest.raises(ValueError, match="float32 and bfloat16"):
    kernel.decode_attention(*inputs, np.zeros(2, np.int32), 5)


def test_resolving_the_setting(monkeypatch, caplog):
  assert sampler_lib.resolve_decode_attention("auto", "cpu") is kernel.decode_attention
  assert sampler_lib.resolve_decode_attention("kernel", "cpu") is kernel.decode_attention
  assert sampler_lib.resolve_decode_attention("xla", "cpu") is None
  assert sampler_lib.resolve_decode_attention("auto", "gpu") is None
  with pytest.raises(ValueError, match="CPU kernel; the backend is 'tpu'"):
    sampler_lib.resolve_decode_attention("kernel", "tpu")
  with pytest.raises(ValueError, match="SamplerConfig.decode_attention='fast'; use one of"):
    sampler_lib.resolve_decode_attention("fast", "cpu")
  with pytest.raises(ValueError, match="sampling.decode_attention='fast'"):
    check_kernel_setting("fast", "sampling.decode_attention")
  # Without the kernel, "auto" falls back to XLA with a warning and "kernel" refuses.
  monkeypatch.setattr(cpu_library, "unavailable_reason", lambda: "no compiler here")
  sampler_lib._warn_kernel_fallback.cache_clear()  # warned once per reason
  with caplog.at_level(logging.WARNING, logger="memtrain"):
    assert sampler_lib.resolve_decode_attention("auto", "cpu") is None
  assert "no compiler here" in caplog.text
  with pytest.raises(cpu_library.KernelUnavailableError, match="no compiler here"):
    sampler_lib.resolve_decode_attention("kernel", "cpu")
