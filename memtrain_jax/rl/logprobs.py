"""Per-token log-probs without materialising the [batch, length, vocab] logits.

With a 152k vocabulary the full f32 logits of one 8k-token line take ~5 GB, more than the rest of
the step. Instead the sequence is cut into chunks, and a `lax.scan` computes each chunk's logits,
their f32 log-sum-exp, the target log-probs and (optionally) the entropy. The gradient is
hand-written (`jax.custom_vjp`): from the logits, one elementwise pass forms their cotangent, then
two GEMMs the cotangents of the hidden states and of the output projection. With several chunks
the backward pass recomputes each chunk's logits, so nothing of vocabulary size outlives a chunk;
a single chunk keeps its logits from the forward pass instead (one GEMM fewer).

Only the tokens that carry a loss need log-probs. Given a `loss_mask`, each row's loss tokens are
moved to its front (a stable gather within the row), and only the positions up to the last loss
token of any row are projected: whole chunks past it are skipped, and in the chunk where it falls
the computed positions are rounded up to a sixteenth of the chunk (`lax.switch` over static sizes).
The cost of the output projection then follows the completions rather than the padded batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.models.decoder import matmul_tn


def _project(hidden: jax.Array, weight: jax.Array, vocab_major: bool) -> jax.Array:
  """f32 logits [C, V] of hidden [C, D] (matmul in the input dtype, f32 accumulation)."""
  contract = 1 if vocab_major else 0
  return jax.lax.dot_general(hidden, weight, (((1,), (contract,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _chunk_forward(hidden, weight, targets, vocab_major: bool, compute_entropy: bool):
  """(logp [C], entropy [C] or zeros, lse [C], logits [C, V]) of one chunk of tokens."""
  logits = _project(hidden, weight, vocab_major)
  top = jnp.max(logits, axis=-1, keepdims=True)
  shifted = logits - top
  exp = jnp.exp(shifted)
  if compute_entropy:
    # H = -sum p (shifted - log_norm) = log_norm - sum(exp * shifted) / norm. Both sums come from
    # one variadic reduction, so the exponentials are formed in a single pass over the logits and
    # never stored (separate sums make XLA:CPU materialise `shifted` and `exp`).
    norm, weighted = jax.lax.reduce((exp, exp * shifted), (np.float32(0), np.float32(0)),
                                    lambda a, b: (a[0] + b[0], a[1] + b[1]), (1,))
  else:
    norm = jnp.sum(exp, axis=-1)
  log_norm = jnp.log(norm)
  # The target's logit is read from the logits directly (a gather of C values).
  logp = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - top[:, 0] - log_norm
  entropy = log_norm - weighted / norm if compute_entropy else jnp.zeros_like(logp)
  return logp, entropy, top[:, 0] + log_norm, logits


def _chunk_backward(hidden, weight, targets, lse, entropy, g_logp, g_entropy, vocab_major: bool,
                    logits=None):
  """Cotangents (d hidden [C, D], d weight) of one chunk, from its kept or recomputed logits."""
  if logits is None:
    logits = _project(hidden, weight, vocab_major)
  log_probs = logits - lse[:, None]
  probs = jnp.exp(log_probs)
  onehot = jnp.arange(logits.shape[-1])[None, :] == targets[:, None]
  # d logp_t / d logits = onehot(t) - p.
  d_logits = g_logp[:, None] * (onehot - probs)
  if g_entropy is not None:
    # H = -sum p log p, so dH / d logits_j = -p_j (log p_j + H).
    d_logits = d_logits - g_entropy[:, None] * probs * (log_probs + entropy[:, None])
  d_logits = d_logits.astype(hidden.dtype)
  d_hidden = jax.lax.dot_general(d_logits, weight, (((1,), (0 if vocab_major else 1,)), ((), ())),
                                 preferred_element_type=jnp.float32).astype(hidden.dtype)
  # [V, D] = d_logits^T hidden, or [D, V] = hidden^T d_logits.
  d_weight = matmul_tn(d_logits, hidden) if vocab_major else matmul_tn(hidden, d_logits)
  return d_hidden, d_weight


# A chunk's computed positions are rounded up to a multiple of chunk / _BUCKETS (one `lax.switch`
# branch per multiple), so a chunk that is only partly loss tokens costs little more than its part.
_BUCKETS = 16


def _buckets(chunk: int) -> tuple[int, list[int]]:
  """(granule, positions computed by each switch branch); branch 0 computes nothing."""
  granule = -(-chunk // _BUCKETS)
  return granule, [min(j * granule, chunk) for j in range(-(-chunk // granule) + 1)]


def _bucket(index, chunk: int, num_valid, granule: int):
  """The switch branch of chunk `index`: granules up to the last loss token of any row in it."""
  positions = jnp.max(jnp.clip(num_valid - index * chunk, 0, chunk))
  return (positions + granule - 1) // granule


def _pad_to(x: jax.Array, size: int) -> jax.Array:
  """Zero-pads axis 1 (positions) to `size`."""
  return jnp.pad(x, [(0, 0), (0, size - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _rows(x: jax.Array, positions: int) -> jax.Array:
  """[B, P, ...] -> [B * positions, ...]: the first positions of every row, as matmul rows."""
  return x[:, :positions].reshape(-1, *x.shape[2:])


def _chunked_impl(hidden, weight, targets, num_valid, vocab_major, compute_entropy, keep_logits):
  """(logp, entropy) [num_chunks, B, C] of hidden [num_chunks, B, C, D], and the residuals."""
  batch, chunk = hidden.shape[1:3]
  granule, bucket_positions = _buckets(chunk)
  vocab = weight.shape[0 if vocab_major else 1]

  def step(_, xs):
    index, h, t = xs

    def branch(positions):
      def compute():
        out = _chunk_forward(_rows(h, positions), weight, _rows(t, positions), vocab_major,
                             compute_entropy)
        return tuple(_pad_to(x.reshape(batch, positions, *x.shape[1:]), chunk)
                     for x in out[:3 + keep_logits])
      return compute

    def skip():
      zeros = (jnp.zeros((batch, chunk), jnp.float32),) * 3
      return zeros + ((jnp.zeros((batch, chunk, vocab), jnp.float32),) if keep_logits else ())

    branches = [skip] + [branch(positions) for positions in bucket_positions[1:]]
    return None, jax.lax.switch(_bucket(index, chunk, num_valid, granule), branches)

  indices = jnp.arange(hidden.shape[0])
  _, out = jax.lax.scan(step, None, (indices, hidden, targets))
  logp, entropy, lse = out[:3]
  logits = out[3] if keep_logits else None
  return (logp, entropy), (hidden, weight, targets, num_valid, lse, entropy, logits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(hidden, weight, targets, num_valid, vocab_major: bool, compute_entropy: bool,
             keep_logits: bool):
  """(logp, entropy) [num_chunks, B, C] of hidden [num_chunks, B, C, D].

  Row b's positions from num_valid[b] on (counted over the concatenated chunks) may be skipped;
  their outputs are then 0.
  """
  return _chunked_impl(hidden, weight, targets, num_valid, vocab_major, compute_entropy,
                       keep_logits)[0]


def _chunked_fwd(hidden, weight, targets, num_valid, vocab_major, compute_entropy, keep_logits):
  # With symbolic_zeros the primals come wrapped (value, perturbed).
  return _chunked_impl(hidden.value, weight.value, targets.value, num_valid.value, vocab_major,
                       compute_entropy, keep_logits)


def _chunked_bwd(vocab_major, compute_entropy, keep_logits, residuals, cotangents):
  hidden, weight, targets, num_valid, lse, entropy, logits = residuals
  g_logp, g_entropy = cotangents
  batch, chunk = hidden.shape[1:3]
  granule, bucket_positions = _buckets(chunk)
  symbolic_zero = lambda x: isinstance(x, jax.custom_derivatives.SymbolicZero)
  # The entropy is usually only reported, with a zero cotangent: then its term is left out.
  with_entropy = compute_entropy and not symbolic_zero(g_entropy)
  if symbolic_zero(g_logp):
    g_logp = jnp.zeros(targets.shape, jnp.float32)
  xs = (jnp.arange(hidden.shape[0]), hidden, targets, lse, entropy, g_logp,
        g_entropy if with_entropy else None, logits)

  def step(d_weight, xs):
    index, h, t, chunk_lse, chunk_entropy, g, ge, chunk_logits = xs

    def branch(positions):
      def compute():
        rows = lambda x: None if x is None else _rows(x, positions)
        d_h, d_w = _chunk_backward(rows(h), weight, rows(t), rows(chunk_lse), rows(chunk_entropy),
                                   rows(g), rows(ge), vocab_major, rows(chunk_logits))
        return d_weight + d_w, _pad_to(d_h.reshape(batch, positions, -1), chunk)
      return compute

    skip = lambda: (d_weight, jnp.zeros_like(h))
    branches = [skip] + [branch(positions) for positions in bucket_positions[1:]]
    return jax.lax.switch(_bucket(index, chunk, num_valid, granule), branches)

  d_weight, d_hidden = jax.lax.scan(step, jnp.zeros(weight.shape, jnp.float32), xs)
  return d_hidden, d_weight.astype(weight.dtype), None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def chunked_token_logprobs(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, *,
                           chunk_size: int, compute_entropy: bool = False,
                           loss_mask: jax.Array | None = None, vocab_major: bool = True
                           ) -> tuple[jax.Array, jax.Array | None]:
  """log pi(targets | hidden) per token, computed chunk by chunk over the sequence.

  Args:
    hidden: [B, L, D] final hidden states (after the final norm), any float dtype.
    unembedding: the output projection, [V, D] as the package stores it (`models.unembedding`:
      the tied embedding or the untied head, used as is without a transposed copy); or [D, V]
      with `vocab_major=False`.
    targets: [B, L] int token ids in [0, V).
    chunk_size: sequence positions per chunk; L need not be a multiple (the tail is padded).
    compute_entropy: also return the entropy of the full next-token distribution.
    loss_mask: optional [B, L]; when given, log-probs and entropies are computed only where it is
      nonzero (each row's loss tokens are moved to its front first) and are 0 elsewhere.
    vocab_major: `unembedding` is [V, D] (default); False: [D, V].

  Returns:
    (logp [B, L] float32, entropy [B, L] float32 or None).
  """
  batch, length, _ = hidden.shape
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  chunk_size = min(chunk_size, length)
  num_chunks = -(-length // chunk_size)
  if loss_mask is None:
    num_valid = jnp.full((batch,), length, jnp.int32)
  else:
    on = loss_mask > 0
    num_valid = jnp.sum(on, axis=1, dtype=jnp.int32)
    # Within each row (the batch axis may be sharded; rows never mix), loss tokens first, each
    # group in its original order; `inverse` puts the results back.
    order = jnp.argsort(~on, axis=1, stable=True)
    inverse = jnp.argsort(order, axis=1)
    hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
    targets = jnp.take_along_axis(targets, order, axis=1)
  pad = num_chunks * chunk_size - length
  if pad:
    # Padded positions use token 0; they come after every loss token and are sliced off.
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [num_chunks, B, C, ...] so that scan walks the sequence.
  hidden_chunks = hidden.reshape(batch, num_chunks, chunk_size, -1).swapaxes(0, 1)
  target_chunks = targets.reshape(batch, num_chunks, chunk_size).swapaxes(0, 1)
  # A single chunk's logits are kept for the backward pass (they exist then anyway); with several,
  # each chunk's are recomputed there, so only one chunk's exist at a time.
  logp, entropy = _chunked(hidden_chunks, unembedding, target_chunks, num_valid, vocab_major,
                           compute_entropy, num_chunks == 1)

  def unchunk(x):
    x = x.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size)[:, :length]
    if loss_mask is not None:
      x = jnp.where(on, jnp.take_along_axis(x, inverse, axis=1), 0.0)
    return x

  return unchunk(logp), (unchunk(entropy) if compute_entropy else None)
