"""Decode attention as a multi-threaded CPU kernel (an XLA FFI custom call), with XLA as fallback.

One query token per row against the sampler's KV cache. On the CPU backend XLA runs the batched
score and value dots of this step on one thread and over the cache's whole capacity; the kernel
(`decode_attention_cpu.cc`) spreads the (row, KV head) pairs over XLA's intra-op thread pool,
reads only each row's attended slots, and writes the token's K/V into the cache in place (the
cache buffers are aliased to its results), which XLA:CPU cannot do for a bf16 cache. The query
heads that share a KV head are scored and summed together, so each K and V row is read and
widened once, its register blocks sized to the host's vectors (`cpu_vectors.h`), and each pair
prefetches the next pair's K rows while it computes. SmolLM2-135M, batch 32, all 256 slots
attended, 30 layers on 2 cores: 16-17 ms against 38-41 ms on an AVX-512 Xeon (13 ms with a bf16
cache), 19-22 against 48-68 ms on an AVX2 EPYC (Zen 3; both before the prefetch), 15-22 against
31-37 ms on an AVX-512 EPYC (Zen 4), and less when rows attend fewer slots
(`experiments/bench_rollout.py` (2)).

The kernel is C++ (`decode_attention_cpu.cc`), built on first use with the other CPU kernels
(`kernels.cpu_library`, which says how and where). Without a working compiler the sampler's
"auto" setting falls back to XLA's attention (`models.decoder.cached_attention`), which gives the
same result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memtrain_jax.kernels import cpu_library

TARGET_NAME = "memtrain_decode_attention_cpu"
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)


def decode_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_t: jax.Array,
                     v: jax.Array, start: jax.Array, slot: jax.Array):
  """One decode step's attention on the CPU backend: writes the token's K/V, then attends.

  Args:
    q: [B, H, D] float32 or bfloat16, RoPE applied; H a multiple of the KV heads K.
    k_new, v_new: [B, K, D] in q's dtype, the token's K (RoPE applied) and V.
    k_t: [B, K, D, S] (the cache's K, transposed); v: [B, K, S, D]; both float32 or bfloat16.
    start: int32 [B], the first attended slot of each row.
    slot: int32 scalar, the slot the token's K/V go to; slots [start[b], slot] are attended.

  Returns:
    (out [B, H, D] in q's dtype, k_t, v): the caches with the token written at `slot` (rounded to
    their dtype; in place when their buffers can be donated), and `models.decoder.cached_attention`
    of q against those slots, computed with float32 scores and sums (zeros for a row with no
    attended slot).
  """
  cpu_library.load()
  b, h, d = q.shape
  kv_heads = k_t.shape[1] if k_t.ndim == 4 else -1
  if (k_t.shape != (b, kv_heads, d, k_t.shape[-1]) or v.shape != (b, kv_heads, k_t.shape[-1], d)
      or k_new.shape != (b, kv_heads, d) or v_new.shape != k_new.shape or h % kv_heads):
    raise ValueError(f"decode_attention wants q [B, H, D], k_new and v_new [B, K, D], k_t "
                     f"[B, K, D, S], v [B, K, S, D] with K dividing H; got q {q.shape}, k_new "
                     f"{k_new.shape}, v_new {v_new.shape}, k_t {k_t.shape}, v {v.shape}")
  if (q.dtype not in _SUPPORTED_DTYPES or k_t.dtype not in _SUPPORTED_DTYPES
      or v.dtype != k_t.dtype or k_new.dtype != q.dtype or v_new.dtype != q.dtype):
    raise ValueError(f"decode_attention supports float32 and bfloat16: q, k_new, v_new of one "
                     f"dtype, k_t and v of one; got q {q.dtype}, k_new {k_new.dtype}, v_new "
                     f"{v_new.dtype}, k_t {k_t.dtype}, v {v.dtype}")
  call = jax.ffi.ffi_call(
      TARGET_NAME, (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k_t.shape,
                                                                                  k_t.dtype),
                    jax.ShapeDtypeStruct(v.shape, v.dtype)),
      input_output_aliases={3: 1, 4: 2})
  return call(q, k_new, v_new, k_t, v, jnp.asarray(start, jnp.int32).reshape(b),
              jnp.asarray(slot, jnp.int32))
