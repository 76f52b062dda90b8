"""Per-token log-probs without materialising the [batch, length, vocab] logits.

With a 152k vocabulary the full f32 logits of one 8k-token line take ~5 GB, more than the rest of
the step. Instead the sequence is cut into chunks, and a `lax.scan` computes each chunk's logits, its
f32 log-softmax and the target log-probs. The scan body is rematerialised (`jax.checkpoint`), so the
backward pass recomputes one chunk's logits at a time instead of keeping all of them as residuals.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_logprobs(hidden_chunk: jax.Array, unembedding: jax.Array, target_chunk: jax.Array,
                    compute_entropy: bool) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs (and entropy) of one chunk: hidden [B, C, D], targets [B, C]."""
  # Matmul in the input dtype (bf16 on accelerators) with f32 accumulation; softmax in f32.
  logits = jnp.einsum("bcd,dv->bcv", hidden_chunk, unembedding, preferred_element_type=jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_logp = jnp.take_along_axis(log_probs, target_chunk[..., None], axis=-1)[..., 0]
  if not compute_entropy:
    return target_logp, None
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return target_logp, entropy


def chunked_token_logprobs(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, *,
                           chunk_size: int, compute_entropy: bool = False
                           ) -> tuple[jax.Array, jax.Array | None]:
  """log pi(targets | hidden) per token, computed chunk by chunk over the sequence.

  Args:
    hidden: [B, L, D] final hidden states (after the final norm), any float dtype.
    unembedding: [D, V] output projection.
    targets: [B, L] int token ids in [0, V).
    chunk_size: sequence positions per chunk; L need not be a multiple (the tail is padded).
    compute_entropy: also return the entropy of the full next-token distribution.

  Returns:
    (logp [B, L] float32, entropy [B, L] float32 or None).
  """
  batch, length, _ = hidden.shape
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  chunk_size = min(chunk_size, length)
  num_chunks = -(-length // chunk_size)
  pad = num_chunks * chunk_size - length
  if pad:
    # Padded positions use token 0; their outputs are sliced off and get no gradient.
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [num_chunks, B, C, ...] so that scan walks the sequence.
  hidden_chunks = hidden.reshape(batch, num_chunks, chunk_size, -1).swapaxes(0, 1)
  target_chunks = targets.reshape(batch, num_chunks, chunk_size).swapaxes(0, 1)

  body = jax.checkpoint(functools.partial(_chunk_logprobs, compute_entropy=compute_entropy))

  def step(carry, chunk):
    hidden_chunk, target_chunk = chunk
    return carry, body(hidden_chunk, unembedding, target_chunk)

  _, (logp, entropy) = jax.lax.scan(step, None, (hidden_chunks, target_chunks))

  def unchunk(x):
    return x.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size)[:, :length]

  return unchunk(logp), (unchunk(entropy) if compute_entropy else None)
