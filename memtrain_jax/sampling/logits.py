"""Choosing the next token from logits: temperature, top-k, top-p, greedy, and their log-probs.

Every knob is a traced scalar, so one compiled decode program serves every setting. The
branches that cost something (sorting the vocabulary for top-k/top-p, drawing random numbers) sit
under `lax.cond` on those scalars and run only when a setting needs them.
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


def choose_tokens(logits: jax.Array, key: jax.Array, params: SamplingParams) -> TokenChoice:
  """Samples one token per row from float32 logits [B, V]."""
  policy_logp = jax.nn.log_softmax(logits, axis=-1)

  def greedy(_):
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # Greedy is a point mass: the sampling distribution gives the chosen token probability 1.
    return tokens, jnp.zeros(tokens.shape, jnp.float32)

  def sample(_):
    scaled = logits / params.temperature
    truncate = (params.top_k > 0) | (params.top_p < 1.0)
    scaled = jax.lax.cond(truncate, lambda s: truncate_logits(s, params.top_p, params.top_k),
                          lambda s: s, scaled)
    tokens = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    sampling_logp = jax.nn.log_softmax(scaled, axis=-1)
    return tokens, jnp.take_along_axis(sampling_logp, tokens[:, None], axis=-1)[:, 0]

  tokens, sampling_logprobs = jax.lax.cond(params.temperature <= 0.0, greedy, sample, None)
  logprobs = jnp.take_along_axis(policy_logp, tokens[:, None], axis=-1)[:, 0]
  return TokenChoice(tokens, logprobs, sampling_logprobs)
