"""The decoder: pure functions over a params pytree (Llama, Qwen2/2.5, Qwen3).

RMSNorm, rotate-half RoPE (theta, Llama-3 and linear scaling), grouped-query attention without
repeating K/V, SwiGLU. Norms, softmax and logits are computed in float32 whatever the compute
dtype, as `transformers` does.

Two entry points:
- `forward_hidden` / `forward`: full sequences, for training and log-probs. Padding and packed rows
  come in through `segment_ids` (0 = padding) and per-token `positions`.
- `forward_with_cache`: writes K/V of a block of tokens into a fixed-capacity cache, for prefill
  and decode. Rows are left-padded; `cache_start[b]` is the first real slot of row b. The cache
  keeps K transposed (see `init_cache`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.kernels.packed_matmul import PackedWeight
from memtrain_jax.models import block_attention
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.models.params import is_stacked, unembedding

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Building blocks.


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (weight.astype(jnp.float32) * x32).astype(x.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies [head_dim / 2] in float32, with Llama-3 or linear scaling applied."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  scaling = config.rope_scaling_dict
  if scaling is None:
    return inv_freq
  factor = float(scaling["factor"])
  if scaling["rope_type"] == "linear":
    return (inv_freq / factor).astype(np.float32)
  # Llama 3: long wavelengths are divided by `factor`, short ones kept, the band between smoothed.
  low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
  old_len = float(scaling["original_max_position_embeddings"])
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * np.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin of shape [batch, length, head_dim] in float32."""
  inv_freq = jnp.asarray(rope_inv_freq(config))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  cos, sin = jnp.cos(freqs), jnp.sin(freqs)
  # Computed once and kept: without the barrier XLA fuses cos and sin into each of their uses
  # (every layer's query and key fusions), so SmolLM2's prefill program held 150 copies of each
  # and spent ~4% of its time in sincosf.
  return jax.lax.optimization_barrier((jnp.concatenate([cos, cos], axis=-1),
                                       jnp.concatenate([sin, sin], axis=-1)))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, heads, head_dim]; rotate-half convention (the `transformers` layout)."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)


def _dense(x: jax.Array, w: jax.Array, in_axes: int = 1) -> jax.Array:
  """x [..., *in] times w [*out, *in] (in = w's last `in_axes` axes) -> [..., *out] in x's dtype,
  as one 2-D matmul.

  Weights are stored output axes first, as `transformers` stores them (`models.params`): with
  `batch` rows per decode step, XLA:CPU's matmul over a [out, in] weight contracted on its
  minor axis ran 1.2-1.3x faster than over [in, out] (SmolLM2's MLP matrices at 8 and 32 rows, f32
  and bf16), and training's large GEMMs take the same time either way.

  `w` may be held in a wider dtype than x (float32 parameters, bfloat16 compute): it is cast to
  x's dtype for the matmul, and its gradient comes back in its own dtype, accumulated in float32.
  Every matmul accumulates in float32 (`preferred_element_type`): besides the precision, XLA:CPU
  only runs bfloat16 matmuls on its fast path (AMX / AVX512-BF16) when they produce float32; a
  bfloat16 output measured 5x slower on a Xeon with AMX, no faster than float32.

  The leading axes of `x` and the weight's input and output axes are flattened first (free
  reshapes of contiguous arrays). With the 3-D einsum instead, XLA:CPU computes the weight gradient
  as a dot contracting over (batch, length) and transposes the whole [batch * length, out]
  cotangent first; the 2-D form backpropagates as two plain GEMMs, with no transpose.

  A decode loop's weights may be `PackedWeight`s (`sampling.decode_weights`), multiplied by the
  CPU packed-matmul kernel instead (float32, no gradient).
  """
  lead = x.shape[:x.ndim - in_axes]
  if isinstance(w, PackedWeight):
    return w(x.reshape(-1, w.in_features)).reshape(*lead, *w.out_shape)
  out_shape = w.shape[:w.ndim - in_axes]
  k = int(np.prod(w.shape[w.ndim - in_axes:]))
  y = _matmul(x.reshape(-1, k), w.reshape(-1, k))
  return y.reshape(*lead, *out_shape)


def _mm(a: jax.Array, b: jax.Array, contract: tuple[int, int], out_dtype) -> jax.Array:
  """a . b contracting axis contract[0] of a with contract[1] of b, f32 accumulation."""
  out = jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                            preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def _mm_rows(x: jax.Array, w: jax.Array, out_dtype) -> jax.Array:
  """x [N, K] . w [M, K]^T (`_mm` contracting both minor axes), f32 accumulation.

  A single 16-bit row is padded to two on the CPU backend: XLA:CPU's bf16 matrix-vector product
  is far slower than its two-row matmul (all of SmolLM2's MLP matrices: 85 ms against 13 ms
  alone; a whole bf16 decode step at batch 1: 37 ms against 31 ms).
  """
  if x.shape[0] == 1 and x.dtype.itemsize == 2 and jax.default_backend() == "cpu":
    return _mm(jnp.concatenate([x, x]), w, (1, 1), out_dtype)[:1]
  return _mm(x, w, (1, 1), out_dtype)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [N, K] @ w[M, K]^T in x's dtype (w cast to it), accumulated in float32."""
  return _mm_rows(x, w.astype(x.dtype), x.dtype)


def _matmul_fwd(x, w):
  return _matmul(x, w), (x, w)


def _matmul_bwd(residuals, d_y):
  # Both GEMMs take compute-dtype operands and accumulate in f32; the weight's cotangent stays f32
  # (when w is) instead of being rounded to the compute dtype and widened again.
  x, w = residuals
  d_y = d_y.astype(x.dtype)
  return _mm(d_y, w.astype(x.dtype), (1, 0), x.dtype), matmul_tn(d_y, x).astype(w.dtype)


def matmul_tn(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^T b in f32 (f32 accumulation) for a [N, K], b [N, M]: the weight-gradient GEMM.

  XLA folds a plain transpose of `a` into the dot as contracting dimension 0 of the left operand,
  which XLA:CPU's fast low-precision matmul does not take; it then falls back to a float32 matmul
  over upcast copies (4-5x slower for a bf16 weight gradient on AMX). For low-precision operands
  a^T is therefore materialised through a unit axis, which is not folded (N x K elements, small
  next to the GEMM); f32 matmuls take the transposed operand at full speed.
  """
  if a.dtype == jnp.float32:
    return _mm(a, b, (0, 0), jnp.float32)
  n, k = a.shape
  a_t = jnp.swapaxes(a.reshape(n, k, 1), 0, 2).reshape(k, n)
  return _mm(a_t, b, (1, 0), jnp.float32)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _project_qkv(config: ModelConfig, lp: Params, x: jax.Array, cos, sin):
  dtype = config.dtype
  q = _dense(x, lp["wq"])
  k = _dense(x, lp["wk"])
  v = _dense(x, lp["wv"])
  if config.qkv_bias:
    q = q + lp["bq"].astype(dtype)
    k = k + lp["bk"].astype(dtype)
    v = v + lp["bv"].astype(dtype)
  if config.qk_norm:
    q = rms_norm(q, lp["q_norm"], config.rms_norm_eps)
    k = rms_norm(k, lp["k_norm"], config.rms_norm_eps)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


# Query positions per block of `causal_attention`.
ATTENTION_BLOCK = 128


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention. q [B,T,H,D]; k, v [B,S,K,D]; mask [B,T,S] bool -> [B,T,H,D].

  Query heads are grouped per KV head by a reshape, so K and V are never repeated in memory. K and
  V are moved to the heads-major layout once, and `_attention_block` does the rest: both of its
  matmuls then batch over (B, K) with contiguous operands, which XLA:CPU runs without inserting a
  transpose per matmul.
  """
  return _attention_block(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     block: int = ATTENTION_BLOCK, first_key_blocks=None) -> jax.Array:
  """`attention` for a full causal sequence (S == T), skipping the key blocks above the diagonal.

  Query block i only attends to keys [0, (i + 1) * block): about half of the score matrix is never
  computed, nor softmaxed, which matters because XLA:CPU materialises the scores in float32.
  With `first_key_blocks` (`block_attention.first_key_blocks(mask, block)`), query block i also
  skips the key blocks before the first one its queries can see (packed rows):
  `block_attention.skipping_causal_attention`.
  """
  if first_key_blocks is not None:
    return block_attention.skipping_causal_attention(q, k, v, mask, first_key_blocks, block)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  t = q.shape[1]
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    outs.append(_attention_block(q[:, start:end], k[:, :, :end], v[:, :, :end],
                                 mask[:, start:end, :end]))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _attention_block(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                     k_transposed: bool = False, compute_dtype=None) -> jax.Array:
  """Heads-major attention: q [B,T,H,D]; k, v [B,K,S,D] (k [B,K,D,S] when `k_transposed`, the
  KV cache's layout); mask [B,T,S] -> [B,T,H,D].

  Grouped heads-major matmuls, with fewer passes over the f32 [.., T, S] scores, which
  XLA:CPU materialises between the two matmuls: the 1/sqrt(D) scale goes on q (exact for a
  power-of-two D), and the softmax normalisation is applied to the [.., T, D] output rather than
  to the probabilities.

  `compute_dtype` (default: v's dtype) is the precision the probabilities are rounded to before
  the value matmul, and the output's dtype: a wider cache computes as the compute dtype would.
  """
  compute_dtype = v.dtype if compute_dtype is None else compute_dtype
  b, t, h, d = q.shape
  kv_heads = k.shape[1]
  # [B, K, G*T, D]: the query heads of one KV head and all positions as the rows of one matmul.
  q = q * jnp.asarray(1.0 / np.sqrt(d), q.dtype)
  q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
  q = q.reshape(b, kv_heads, (h // kv_heads) * t, d)
  scores = jnp.einsum("bkqd,bkds->bkqs" if k_transposed else "bkqd,bksd->bkqs", q, k,
                      preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kv_heads, h // kv_heads, t, -1)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  # The max only keeps exp() in range: softmax does not depend on it, so it needs no gradient.
  top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  unnormalized = jnp.exp(scores - top)
  norm = jnp.sum(unnormalized, axis=-1, keepdims=True)
  unnormalized = unnormalized.astype(compute_dtype).astype(v.dtype)
  unnormalized = unnormalized.reshape(b, kv_heads, (h // kv_heads) * t, -1)
  out = jnp.einsum("bkqs,bksd->bkqd", unnormalized, v, preferred_element_type=jnp.float32)
  out = (out.reshape(b, kv_heads, h // kv_heads, t, d) / norm).astype(compute_dtype)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def cached_attention(q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """`attention` against the KV cache's layout: q [B,T,H,D]; K transposed, k_t [B,K,D,S];
  v [B,K,S,D]; mask [B,T,S] bool -> [B,T,H,D] in q's dtype.

  With K stored [D, S] the score matmul's right operand is already (contraction, columns), so
  XLA:CPU's matmul reads the cache as it lies; with [S, D] it repacks all of K on every call,
  which made the score matmul 2-7x slower than the value matmul over the same bytes at decode.

  A cache wider than q (an f32 cache for bf16 compute, `sampling.sampler.resolve_cache_dtype`)
  is read as it is: q is widened instead of the whole cache being narrowed per step, and the
  probabilities are still rounded to q's dtype, so the result is the narrow computation's.
  """
  return _attention_block(q.astype(v.dtype), k_t, v, mask, k_transposed=True,
                          compute_dtype=q.dtype)


@jax.custom_vjp
def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) * up, with a hand-written gradient.

  Autodiff keeps sigmoid(gate) and silu(gate) as extra [tokens, mlp] arrays, each one more pass
  over memory in the forward; here the forward is one fused pass and the backward recomputes the
  sigmoid inside the pass that forms both cotangents.
  """
  return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
  return _swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals, d_out):
  gate, up = residuals
  g32, u32, d32 = (x.astype(jnp.float32) for x in (gate, up, d_out))
  sig = jax.nn.sigmoid(g32)
  d_gate = d32 * u32 * sig * (1.0 + g32 * (1.0 - sig))
  return d_gate.astype(gate.dtype), (d32 * g32 * sig).astype(up.dtype)


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _mlp(config: ModelConfig, lp: Params, x: jax.Array) -> jax.Array:
  gate = _dense(x, lp["w_gate"])
  up = _dense(x, lp["w_up"])
  return _dense(_swiglu(gate, up), lp["w_down"])


def _cache_write(cache: jax.Array, update: jax.Array, index: tuple) -> jax.Array:
  """`cache` with `update` written at `index`.

  On the CPU backend a 16-bit float cache is written through its bits as uint16: XLA:CPU upcasts
  a bf16 dynamic-update-slice to f32, re-reading and re-writing the whole cache in f32 per layer
  and step (bf16 decode at batch 32: 140 -> 112 ms per step through the bits). Even so the write
  is not in place (its fusion ends in a bitcast-convert), which is why the sampler keeps an f32
  cache on CPU when XLA writes it (`sampling.sampler.resolve_cache_dtype`; the decode-attention
  kernel writes a bf16 cache in place). Other backends write 16-bit floats natively.
  """
  update = update.astype(cache.dtype)
  if (cache.dtype.itemsize != 2 or not jnp.issubdtype(cache.dtype, jnp.floating)
      or jax.default_backend() != "cpu"):
    return jax.lax.dynamic_update_slice(cache, update, index)
  bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
  written = jax.lax.dynamic_update_slice(bits(cache), bits(update), index)
  return jax.lax.bitcast_convert_type(written, cache.dtype)


def _layer(config: ModelConfig, lp: Params, x, cos, sin, mask, kv_cache=None, write_index=None,
           first_key_blocks=None, empty_cache=False, attend_cache=None):
  """One pre-norm decoder layer. Returns (x, new_kv_cache or None).

  `attend_cache(q, k, v, k_t_cache, v_cache) -> (attn, k_t_cache, v_cache)`, a kernel that writes
  the block's K/V into the cache and attends to it, replaces the cache write and
  `cached_attention` over `mask` against a non-empty cache.
  """
  h = rms_norm(x, lp["attn_norm"], config.rms_norm_eps)
  q, k, v = _project_qkv(config, lp, h, cos, sin)
  new_cache = None
  if kv_cache is None:
    attn = causal_attention(q, k, v, mask, first_key_blocks=first_key_blocks)
  else:
    # The cache is heads-major, K as [B, K, D, S] and V as [B, K, S, D]: attention reads both as
    # they lie, without a per-step transpose or repack of the whole cache. Only the block's own
    # few K/V columns are transposed, on the way in.
    if attend_cache is not None:
      attn, k_all, v_all = attend_cache(q, k, v, kv_cache["k"], kv_cache["v"])
    else:
      zero = jnp.zeros((), jnp.int32)
      k_all = _cache_write(kv_cache["k"], k.transpose(0, 2, 3, 1), (zero, zero, zero, write_index))
      v_all = _cache_write(kv_cache["v"], jnp.swapaxes(v, 1, 2), (zero, zero, write_index, zero))
      if empty_cache:
        # An empty cache (prefill): the block attends only to itself, and causal attention skips
        # the key blocks above its diagonal instead of reading the whole capacity.
        attn = causal_attention(q, k, v, mask)
      else:
        # Attention reads the cache after the write. Reading it before (the block's own K/V as a
        # separate part) made XLA:CPU copy every layer's whole cache per step to keep the write
        # in place: a decode step at batch 32 went from 132 to 180 ms.
        attn = cached_attention(q, k_all, v_all, mask)
    new_cache = {"k": k_all, "v": v_all}
  x = x + _dense(attn, lp["wo"], in_axes=2)
  h = rms_norm(x, lp["mlp_norm"], config.rms_norm_eps)
  x = x + _mlp(config, lp, h)
  return x, new_cache


def _run_layers(config: ModelConfig, params: Params, x, cos, sin, mask, cache=None,
                write_index=None, first_key_blocks=None, empty_cache=False, attend_cache=None):
  """Runs every layer, unrolled (list of layers) or with lax.scan (stacked layers)."""

  def body(x, lp, kv):
    return _layer(config, lp, x, cos, sin, mask, kv, write_index, first_key_blocks, empty_cache,
                  attend_cache)

  if config.remat:
    body = jax.checkpoint(body, prevent_cse=not is_stacked(params))

  if is_stacked(params):
    def scan_body(x, layer_and_cache):
      lp, kv = layer_and_cache
      x, new_kv = body(x, lp, kv)
      return x, new_kv

    x, new_cache = jax.lax.scan(scan_body, x, (params["layers"], cache))
    return x, new_cache

  new_cache = [] if cache is not None else None
  for i, lp in enumerate(params["layers"]):
    x, kv = body(x, lp, None if cache is None else cache[i])
    if cache is not None:
      new_cache.append(kv)
  return x, new_cache


def _embed(config: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
  return jnp.take(params["embed"], tokens, axis=0).astype(config.dtype)


def _check_tokens(tokens) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be int32 [batch, length]; got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be an integer array; got dtype {tokens.dtype}")


# ----------------------------------------------------------------------------------------------
# Full-sequence forward.


def forward_hidden(config: ModelConfig, params: Params, tokens: jax.Array, *, positions=None,
                   segment_ids=None, branch_ids=None) -> jax.Array:
  """Final-norm hidden states [batch, length, embed] in the compute dtype.

  Attention is causal within a row and restricted to equal `segment_ids` (packed rows; 0 marks
  padding, which attends only to padding). `positions` default to 0..length-1.

  `branch_ids` pack several rows that share a prompt as a prefix tree (`rl.packing`): within a
  segment, a token of branch b > 0 attends only to branch 0 (the shared trunk) and to branch b.
  """
  _check_tokens(tokens)
  b, t = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  idx = jnp.arange(t)
  mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (idx[None, :, None] >= idx[None, None, :])
  if branch_ids is not None:
    mask &= (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
  cos, sin = rope_cos_sin(config, positions)
  x = _embed(config, params, tokens)
  # Packed lines: each query block skips the key blocks none of its queries can see.
  firsts = (block_attention.first_key_blocks(mask, ATTENTION_BLOCK) if t > ATTENTION_BLOCK
            else None)
  x, _ = _run_layers(config, params, x, cos, sin, mask, first_key_blocks=firsts)
  return rms_norm(x, params["final_norm"], config.rms_norm_eps)


def logits_from_hidden(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """float32 logits from hidden states (the matmul in the compute dtype, f32 accumulation)."""
  lead, d = hidden.shape[:-1], hidden.shape[-1]
  rows = hidden.reshape(-1, d)
  head = unembedding(config, params)
  if isinstance(head, PackedWeight):
    return head(rows).reshape(*lead, -1)
  # Contract with the [vocab, embed] table as it lies (tied or not). Written as `hidden @ embed.T`,
  # XLA:CPU folds the transpose only after choosing the matmul kernel, so a bf16 head ran as an
  # f32 matmul over an upcast copy of the table (3x slower per decode step than this form).
  logits = _mm_rows(rows, head.astype(config.dtype), jnp.float32)
  return logits.reshape(*lead, -1)


def forward(config: ModelConfig, params: Params, tokens: jax.Array, *, positions=None,
            segment_ids=None, branch_ids=None) -> jax.Array:
  """Logits [batch, length, vocab] in float32."""
  hidden = forward_hidden(config, params, tokens, positions=positions, segment_ids=segment_ids,
                          branch_ids=branch_ids)
  return logits_from_hidden(config, params, hidden)


# ----------------------------------------------------------------------------------------------
# KV-cache forward for sampling.


def init_cache(config: ModelConfig, batch: int, capacity: int, *, stacked: bool | None = None,
               dtype=None) -> Any:
  """Zeroed K/V cache mirroring the layer layout: a list of {'k','v'} or one stacked dict.

  Both are heads-major (with a leading layers axis when stacked): V is [batch, kv_heads, capacity,
  head_dim] and K is stored transposed, [batch, kv_heads, head_dim, capacity], the layout the
  score matmul reads fastest (see `cached_attention`). `CACHE_SLOT_AXIS` names the slot axis of
  each.
  """
  stacked = config.scan_layers if stacked is None else stacked
  dtype = config.dtype if dtype is None else dtype
  lead = (config.num_layers,) if stacked else ()
  heads = (batch, config.num_kv_heads)
  k_shape = lead + heads + (config.head_dim, capacity)
  v_shape = lead + heads + (capacity, config.head_dim)
  if stacked:
    return {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
  return [{"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
          for _ in range(config.num_layers)]


# The slot (sequence) axis of each cache array, counted from the end.
CACHE_SLOT_AXIS = {"k": -1, "v": -2}


def cache_capacity(cache: Any) -> int:
  first = cache["v"] if isinstance(cache, dict) else cache[0]["v"]
  return first.shape[CACHE_SLOT_AXIS["v"]]


def forward_with_cache(config: ModelConfig, params: Params, tokens: jax.Array, cache: Any, *,
                       write_index: jax.Array, cache_start: jax.Array,
                       empty_cache: bool = False,
                       decode_attention=None) -> tuple[jax.Array, Any]:
  """Runs a block of tokens against the cache; returns (hidden [B,T,D], updated cache).

  The block's K/V go to slots [write_index, write_index + T) of every row. Row b's real tokens
  start at slot `cache_start[b]` (left padding before it is never attended), so its position of
  slot s is s - cache_start[b]. The block attends to every real slot up to its own.

  `empty_cache` (static) promises that no slot before `write_index` holds a key (a prefill into
  a fresh cache): attention then runs over the block alone, skipping the key blocks above its
  diagonal, instead of over the whole capacity.

  `decode_attention(q, k_new, v_new, k_t, v, cache_start, slot) -> (out, k_t, v)`, a kernel over
  the cache's layout (`kernels.decode_attention`), replaces the cache write and the XLA attention
  for a single-token block against a non-empty cache (a decode step): it writes the token's K/V
  at `slot` = `write_index`, and row b attends slots [cache_start[b], slot].
  """
  _check_tokens(tokens)
  b, t = tokens.shape
  capacity = cache_capacity(cache)
  write_index = jnp.asarray(write_index, jnp.int32)
  slots = write_index + jnp.arange(t, dtype=jnp.int32)  # [T]
  positions = jnp.maximum(slots[None, :] - cache_start[:, None], 0)
  key_slots = slots if empty_cache else jnp.arange(capacity, dtype=jnp.int32)
  mask = (key_slots[None, None, :] >= cache_start[:, None, None]) & (
      key_slots[None, None, :] <= slots[None, :, None])
  attend_cache = None
  if decode_attention is not None and t == 1 and not empty_cache:
    def attend_cache(q, k, v, k_t_cache, v_cache):
      out, k_t_cache, v_cache = decode_attention(q[:, 0], k[:, 0], v[:, 0], k_t_cache, v_cache,
                                                 cache_start, write_index)
      return out[:, None], k_t_cache, v_cache
  cos, sin = rope_cos_sin(config, positions)
  x = _embed(config, params, tokens)
  x, cache = _run_layers(config, params, x, cos, sin, mask, cache=cache, write_index=write_index,
                         empty_cache=empty_cache, attend_cache=attend_cache)
  return rms_norm(x, params["final_norm"], config.rms_norm_eps), cache
