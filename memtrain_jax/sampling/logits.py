"""Choosing the next token from logits: temperature, top-k, top-p, greedy, and their log-probs.

Every knob is a traced scalar, so one compiled decode program serves every setting. The
branches that cost something (sorting the vocabulary for top-k/top-p, drawing random numbers) sit
under `lax.cond` on those scalars and run only when a setting needs them.

This runs once per decode step over [batch, vocab] float32 logits, so it is written as a few
passes of plain reductions: the first argmax as a max and a min (XLA:CPU's variadic (value, index)
reduce behind `jnp.argmax` is several times slower), log-probabilities of the chosen token only,
and sampling by inverting the CDF with one uniform number per row rather than drawing a Gumbel
variate for every vocabulary entry (threefry over the whole vocabulary cost ~5x a greedy step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SamplingParams(NamedTuple):
  """Traced sampling settings (float32 / int32 scalars). Temperature 0 means greedy."""
  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array  # 0 = no top-k

  @classmethod
  def create(cls, temperature: float, top_p: float, top_k: int) -> "SamplingParams":
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    if top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off); got {top_k}")
    # Host scalars: building them must not compile anything.
    return cls(np.float32(temperature), np.float32(top_p), np.int32(top_k))


def truncate_logits(logits: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
  """Sets logits outside the top-k, then outside the top-p nucleus, to -inf ([B, V] float32).

  Order as in `transformers`: top-k first, then top-p over the renormalised top-k set. The most
  likely token always survives. Ties at the threshold are kept.
  """
  vocab = logits.shape[-1]
  ordered = -jnp.sort(-logits, axis=-1)  # descending
  rank = jnp.arange(vocab, dtype=jnp.int32)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  ordered_k = jnp.where(rank[None, :] < k, ordered, -jnp.inf)
  probs = jax.nn.softmax(ordered_k, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # A token is in the nucleus when the mass of the tokens ranked above it is below top_p.
  count = jnp.sum((mass_before < top_p) & (rank[None, :] < k), axis=-1)
  count = jnp.maximum(count, 1)
  threshold = jnp.take_along_axis(ordered, (count - 1)[:, None], axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


class TokenChoice(NamedTuple):
  tokens: jax.Array  # int32 [B]
  logprobs: jax.Array  # float32 [B]: log pi(token), temperature 1, no truncation
  sampling_logprobs: jax.Array  # float32 [B]: log q(token) under the distribution sampled from


def first_argmax(x: jax.Array, x_max: jax.Array) -> jax.Array:
  """`jnp.argmax(x, -1)` (the first maximal entry) given the row maxima x_max [B]; int32 [B]."""
  vocab = x.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  first = jnp.min(jnp.where(x == x_max[:, None], iota, vocab), axis=-1)
  return jnp.minimum(first, vocab - 1)  # a NaN row matches nothing; keep the index in range


def _last_positive(x: jax.Array) -> jax.Array:
  """Index of the last entry > 0 of each row of x [B, N] (0 when there is none)."""
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.maximum(jnp.max(jnp.where(x > 0, iota, -1), axis=-1), 0)


def sample_inverse_cdf(weights: jax.Array, key: jax.Array, block: int = 256) -> jax.Array:
  """One index per row of weights [B, V] (>= 0, unnormalised) with probability weight / row sum.

  Draws one uniform u per row and returns the first index whose cumulative weight exceeds u times
  the total, in two levels so that no scan runs over the whole vocabulary: the block of `block`
  entries where the cumulative weight crosses, then the entry within that block. An index of zero
  weight is never returned (rounding at the ends is clamped to the last positive entry).
  """
  rows, vocab = weights.shape
  num_blocks = -(-vocab // block)
  padded = jnp.pad(weights, ((0, 0), (0, num_blocks * block - vocab)))
  blocks = padded.reshape(rows, num_blocks, block)
  block_mass = jnp.sum(blocks, axis=-1)
  block_cum = jnp.cumsum(block_mass, axis=-1)  # [B, num_blocks]
  target = jax.random.uniform(key, (rows,), jnp.float32) * block_cum[:, -1]
  # Leading zero-weight blocks (and entries) have cumulative weight <= target, so they are passed.
  j = jnp.sum(block_cum <= target[:, None], axis=-1).astype(jnp.int32)
  j = jnp.minimum(j, _last_positive(block_mass))
  before = jnp.where(j > 0, jnp.take_along_axis(block_cum, jnp.maximum(j - 1, 0)[:, None],
                                                axis=-1)[:, 0], 0.0)
  inner = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]  # [B, block]
  rest = jnp.maximum(target - before, 0.0)
  i = jnp.sum(jnp.cumsum(inner, axis=-1) <= rest[:, None], axis=-1).astype(jnp.int32)
  i = jnp.minimum(i, _last_positive(inner))
  return j * block + i


def _row_logsumexp(x: jax.Array, x_max: jax.Array) -> jax.Array:
  # As jax.nn.log_softmax: max + log(sum(exp(x - max))), without the [B, V] result.
  return x_max + jnp.log(jnp.sum(jnp.exp(x - x_max[:, None]), axis=-1))


def _pick(x: jax.Array, tokens: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]


def choose_tokens(logits: jax.Array, key: jax.Array, params: SamplingParams) -> TokenChoice:
  """Samples one token per row from float32 logits [B, V]."""
  policy_max = jnp.max(logits, axis=-1)

  def greedy(_):
    tokens = first_argmax(logits, policy_max)
    # Greedy is a point mass: the sampling distribution gives the chosen token probability 1.
    return tokens, jnp.zeros(tokens.shape, jnp.float32)

  def sample(_):
    scaled = logits / params.temperature
    truncate = (params.top_k > 0) | (params.top_p < 1.0)
    scaled = jax.lax.cond(truncate, lambda s: truncate_logits(s, params.top_p, params.top_k),
                          lambda s: s, scaled)
    scaled_max = jnp.max(scaled, axis=-1)
    tokens = sample_inverse_cdf(jnp.exp(scaled - scaled_max[:, None]), key)
    return tokens, _pick(scaled, tokens) - _row_logsumexp(scaled, scaled_max)

  tokens, sampling_logprobs = jax.lax.cond(params.temperature <= 0.0, greedy, sample, None)
  logprobs = _pick(logits, tokens) - _row_logsumexp(logits, policy_max)
  return TokenChoice(tokens, logprobs, sampling_logprobs)
