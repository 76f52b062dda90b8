"""Causal attention over packed lines that skips the key blocks no query of a block can see.

A packed training line holds several rows (segments) one after another. Causal block attention
already skips the key blocks above the diagonal, but query block i still scores every key block
j <= i, although its queries only see their own segment: in a 1024-token line of two or three
~400-token memory-agent rows, about half of those blocks are masked out entirely.

Here the first key block that any query of block i can see is read from the mask at run time
(`first_key_blocks`), and the block's attention runs over keys [lo * block, (i + 1) * block)
only, for the largest lo <= that first block among a few static choices
(`first_block_choices`): a `lax.switch`, each branch a dense attention of static shape. The
gradient is hand-written (flash-attention style: the backward recomputes the probabilities from
the saved log-sum-exp inside the same switch), because autodiff of a switch would keep every
branch's residuals, all but one of them zeros.

Exact for any mask: keys before the first visible block are masked for every query of the block,
so dropping them changes nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def first_key_blocks(mask: jax.Array, block: int) -> jax.Array:
  """int32 [num_query_blocks]: per query block, the first key block any of its queries (in any
  row of the batch) may attend to. mask [B, T, T] bool."""
  t = mask.shape[1]
  num_blocks = -(-t // block)
  firsts = []
  for i in range(num_blocks):
    visible = jnp.any(mask[:, i * block:min((i + 1) * block, t)], axis=(0, 1))  # [T]
    # Causal masks always let a query see itself, so some key <= the block's end is visible.
    firsts.append(jnp.argmax(visible) // block)
  return jnp.stack(firsts).astype(jnp.int32)


def _heads_major(x: jax.Array, kv_heads: int) -> jax.Array:
  """[B, T, H, D] -> [B, K, G*T, D]: the query heads of one KV head and all positions as the
  rows of one matmul."""
  b, t, h, d = x.shape
  x = x.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
  return x.reshape(b, kv_heads, (h // kv_heads) * t, d)


def _queries_major(x: jax.Array, t: int) -> jax.Array:
  """[B, K, G*T, D] -> [B, T, H, D] (the inverse of `_heads_major`)."""
  b, kv_heads, gt, d = x.shape
  return x.reshape(b, kv_heads, gt // t, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, -1, d)


def _scores(qg, k, mask, t):
  """Masked f32 scores [B, K, G, T, S] of heads-major queries qg against keys k [B, K, S, D]."""
  b, kv_heads = k.shape[:2]
  scores = jnp.einsum("bkqd,bksd->bkqs", qg, k, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kv_heads, -1, t, k.shape[2])
  return jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)


def _block_forward(qg, k, v, mask, t):
  """(out [B, K, G*T, D] in v's dtype, lse [B, K, G, T] f32) of one query block."""
  scores = _scores(qg, k, mask, t)
  top = jnp.max(scores, axis=-1, keepdims=True)
  unnormalized = jnp.exp(scores - top)
  norm = jnp.sum(unnormalized, axis=-1, keepdims=True)
  b, kv_heads = k.shape[:2]
  probs = unnormalized.astype(v.dtype).reshape(b, kv_heads, qg.shape[2], -1)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, v, preferred_element_type=jnp.float32)
  out = out.reshape(*norm.shape[:-1], -1) / norm
  return (out.reshape(qg.shape).astype(v.dtype),
          (top + jnp.log(norm))[..., 0])


def _block_backward(qg, k, v, mask, t, out, lse, d_out):
  """(d qg, d k, d v) of one query block against keys k, v [B, K, S, D]."""
  b, kv_heads = k.shape[:2]
  probs = jnp.exp(_scores(qg, k, mask, t) - lse[..., None])  # masked entries: exp(-inf) = 0
  probs = probs.reshape(b, kv_heads, qg.shape[2], -1)
  dtype = v.dtype
  d_out32 = d_out.astype(jnp.float32)
  d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(dtype), d_out.astype(dtype),
                   preferred_element_type=jnp.float32)
  d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out.astype(dtype), v,
                       preferred_element_type=jnp.float32)
  delta = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_scores = (probs * (d_probs - delta)).astype(dtype)
  d_qg = jnp.einsum("bkqs,bksd->bkqd", d_scores, k, preferred_element_type=jnp.float32)
  d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, qg, preferred_element_type=jnp.float32)
  return d_qg, d_k, d_v


def _key_range(i: int, block: int, t: int) -> tuple[int, int]:
  return i * block, min((i + 1) * block, t)


def first_block_choices(i: int) -> list[int]:
  """The first key blocks query block i has a branch for, ascending: spans of 1, 2, 4, 8, ...
  key blocks ending at the diagonal, and all of them. A block runs the narrowest span that
  covers what its queries see (at most twice the needed keys), and the number of branches, hence
  of compiled attention bodies, grows with log(i) rather than i (a 8192-token line has 64 query
  blocks)."""
  spans = [1 << n for n in range(i.bit_length() + 1) if (1 << n) <= i]
  return sorted({0} | {i + 1 - span for span in spans})


def _switch(i: int, first: jax.Array, make_branch):
  """Runs `make_branch(lo)` for the largest lo among `first_block_choices(i)` that is <= first."""
  choices = first_block_choices(i)
  index = jnp.sum(jnp.asarray(choices, jnp.int32) <= first) - 1
  return jax.lax.switch(index, [functools.partial(make_branch, lo) for lo in choices])


def _forward(q, k, v, mask, firsts, block):
  """out [B, T, H, D]; and the heads-major keys and values [B, K, T, D] with, per query block,
  (qg, out, lse), for the backward pass."""
  t = q.shape[1]
  kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, T, D]
  outs, saved = [], []
  for i in range(-(-t // block)):
    start, end = _key_range(i, block, t)
    # The 1/sqrt(D) scale goes on q (exact for a power-of-two D).
    scaled = q[:, start:end] * jnp.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    qg = _heads_major(scaled, k.shape[2])

    def branch(first, qg=qg, start=start, end=end):
      lo = first * block
      return _block_forward(qg, kh[:, :, lo:end], vh[:, :, lo:end], mask[:, start:end, lo:end],
                            end - start)

    out, lse = _switch(i, firsts[i], branch)
    outs.append(_queries_major(out, end - start))
    saved.append((qg, out, lse))
  return jnp.concatenate(outs, axis=1), (kh, vh, saved)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def skipping_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                              firsts: jax.Array, block: int) -> jax.Array:
  """Causal grouped-query attention. q [B,T,H,D]; k, v [B,T,K,D]; mask [B,T,T] bool (causal,
  with any segment / branch structure); firsts = `first_key_blocks(mask, block)`.
  -> [B,T,H,D] in v's dtype."""
  return _forward(q, k, v, mask, firsts, block)[0]


def _vjp_forward(q, k, v, mask, firsts, block):
  out, (kh, vh, saved) = _forward(q, k, v, mask, firsts, block)
  return out, (kh, vh, mask, firsts, saved)


def _vjp_backward(block, residuals, d_out):
  kh, vh, mask, firsts, saved = residuals
  _, kv_heads, t, d = kh.shape
  d_q_blocks = []
  d_kh = jnp.zeros(kh.shape, jnp.float32)
  d_vh = jnp.zeros(vh.shape, jnp.float32)
  for i, (qg, out, lse) in enumerate(saved):
    start, end = _key_range(i, block, t)
    d_out_g = _heads_major(d_out[:, start:end], kv_heads)

    def branch(first, qg=qg, out=out, lse=lse, d_out_g=d_out_g, start=start, end=end):
      lo = first * block
      d_qg, d_k, d_v = _block_backward(qg, kh[:, :, lo:end], vh[:, :, lo:end],
                                       mask[:, start:end, lo:end], end - start, out, lse,
                                       d_out_g)
      pad = ((0, 0), (0, 0), (lo, t - end), (0, 0))
      return d_qg, jnp.pad(d_k, pad), jnp.pad(d_v, pad)

    d_qg, d_k, d_v = _switch(i, firsts[i], branch)
    d_kh, d_vh = d_kh + d_k, d_vh + d_v
    # Scores are (q / sqrt(D)) . k: the cotangent of q carries the same 1/sqrt(D).
    d_q_blocks.append(_queries_major(d_qg / np.sqrt(d), end - start))
  d_q = jnp.concatenate(d_q_blocks, axis=1).astype(kh.dtype)
  return (d_q, jnp.swapaxes(d_kh, 1, 2).astype(kh.dtype), jnp.swapaxes(d_vh, 1, 2).astype(vh.dtype),
          None, None)


skipping_causal_attention.defvjp(_vjp_forward, _vjp_backward)
