"""The two device programs of the sampler: prefill and the decode loop (pure functions).

Both take the weights as an argument, so one compiled program serves every policy version. Shapes
are the only static facts: the padded batch, the prompt bucket and the completion buffer. The
`Sampler` wraps them in `jax.jit` and donates the cache to the decode loop.

Cache layout: the model's own (`models.init_cache`): per layer V [B, kv_heads, capacity, head_dim]
and K transposed, [B, kv_heads, head_dim, capacity], or stacked with a leading layers axis. Slots
[0, P) hold the left-padded prompt, slot P + i the i-th completion token's K/V.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from memtrain_jax import models
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.models.decoder import CACHE_SLOT_AXIS
from memtrain_jax.sampling.logits import SamplingParams, TokenChoice, choose_tokens
from memtrain_jax.sampling.stops import StopSpec, hits_stop


def _batch_axis(x: jax.Array) -> int:
  return x.ndim - 4  # [(layers,) batch, kv_heads, slots or head_dim, head_dim or slots]


def prefill(config: ModelConfig, params: Any, tokens: jax.Array, cache_start: jax.Array,
            row_source: jax.Array, *, capacity: int, cache_dtype=None, cache_sharding=None):
  """Runs the unique prompts once and hands each output row a copy of its prompt's cache.

  Args:
    tokens: int32 [U, P], left-padded unique prompts.
    cache_start: int32 [U], the first real slot of each prompt (P - prompt length).
    row_source: int32 [B], the unique prompt each output row continues (prefix sharing: the n
      samples of one prompt share one prefill).
    capacity: cache slots per row, P + the completion buffer.
    cache_dtype: the KV cache's dtype (default: the compute dtype).
    cache_sharding: optional function (array) -> sharding for the expanded cache.

  Returns:
    (cache for B rows with `capacity` slots, float32 logits [B, V] of the next token, the rows'
    cache_start [B]).
  """
  num_unique, prompt_len = tokens.shape
  cache = models.init_cache(config, num_unique, prompt_len, dtype=cache_dtype)
  hidden, cache = models.forward_with_cache(config, params, tokens, cache,
                                            write_index=jnp.zeros((), jnp.int32),
                                            cache_start=cache_start, empty_cache=True)
  # Left padding puts every prompt's last token in the last column.
  logits = models.logits_from_hidden(config, params, hidden[:, -1])

  def expand(path, x):
    x = jnp.take(x, row_source, axis=_batch_axis(x))
    pad = [(0, 0)] * x.ndim
    pad[CACHE_SLOT_AXIS[path[-1].key]] = (0, capacity - prompt_len)
    x = jnp.pad(x, pad)
    return x if cache_sharding is None else jax.lax.with_sharding_constraint(x, cache_sharding(x))

  cache = jax.tree_util.tree_map_with_path(expand, cache)
  return cache, jnp.take(logits, row_source, axis=0), jnp.take(cache_start, row_source, axis=0)


class DecodeOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, N]; columns at or after a row's length hold 0
  logprobs: jax.Array  # float32 [B, N]: log pi(token), temperature 1, no truncation
  sampling_logprobs: jax.Array  # float32 [B, N]: under the distribution actually sampled from
  lengths: jax.Array  # int32 [B]
  stopped: jax.Array  # bool [B]: ended on a stop token or sequence
  cache: Any  # the donated cache, returned so its buffer is reused in place


class _State(NamedTuple):
  step: jax.Array  # tokens chosen so far (the next column to write)
  cache: Any
  out: DecodeOutput
  done: jax.Array  # bool [B]
  key: jax.Array


def _record(state: _State, choice: TokenChoice, stop: StopSpec, limit: jax.Array) -> _State:
  """Writes one chosen token per live row at column `step` and updates who is done."""
  out, step = state.out, state.step
  live = ~state.done
  tokens = jnp.where(live, choice.tokens, 0)
  put = lambda buf, col: jax.lax.dynamic_update_index_in_dim(buf, col, step, axis=1)
  buf = put(out.tokens, tokens)
  logprobs = put(out.logprobs, jnp.where(live, choice.logprobs, 0.0))
  sampling_logprobs = put(out.sampling_logprobs, jnp.where(live, choice.sampling_logprobs, 0.0))
  lengths = out.lengths + live.astype(jnp.int32)
  hit = live & hits_stop(stop, buf, step)
  stopped = out.stopped | hit
  done = state.done | hit | (lengths >= limit)
  out = DecodeOutput(buf, logprobs, sampling_logprobs, lengths, stopped, out.cache)
  return _State(step + 1, state.cache, out, done, state.key)


def decode(config: ModelConfig, params: Any, cache: Any, logits: jax.Array, cache_start: jax.Array,
           active: jax.Array, limit: jax.Array, sampling: SamplingParams, seed: jax.Array,
           stream: jax.Array, stop: StopSpec, *, max_new_tokens: int,
           decode_attention=None) -> DecodeOutput:
  """Samples up to `limit` (<= max_new_tokens) tokens per row; stops when every row is done.

  Args:
    cache, logits, cache_start: from `prefill` (logits of each row's first completion token).
    active: bool [B]; False for the rows that only pad the batch to its bucket.
    limit: int32 scalar, this call's token budget (traced: changing it does not recompile).
    sampling: traced temperature / top-p / top-k.
    seed, stream: int32 scalars; the random stream is fold_in(key(seed), stream).
    stop: stop ids and token sequences.
    decode_attention: optional attention kernel for the steps (`models.forward_with_cache`).
  """
  batch = logits.shape[0]
  prompt_len = models.cache_capacity(cache) - max_new_tokens
  key = jax.random.fold_in(jax.random.key(seed), stream)
  zeros_f = jnp.zeros((batch, max_new_tokens), jnp.float32)
  out = DecodeOutput(jnp.zeros((batch, max_new_tokens), jnp.int32), zeros_f, zeros_f,
                     jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool), None)
  state = _State(jnp.zeros((), jnp.int32), cache, out, ~active | (limit <= 0), key)

  def choose(state, logits):
    key, sub = jax.random.split(state.key)
    return _record(state._replace(key=key), choose_tokens(logits, sub, sampling), stop, limit)

  # The first token comes from the prefill logits; each loop turn feeds the last token back.
  state = choose(state, logits)

  def keep_going(state):
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  def turn(state):
    last = jax.lax.dynamic_index_in_dim(state.out.tokens, state.step - 1, axis=1)  # [B, 1]
    hidden, cache = models.forward_with_cache(
        config, params, last, state.cache, write_index=prompt_len + state.step - 1,
        cache_start=cache_start, decode_attention=decode_attention)
    logits = models.logits_from_hidden(config, params, hidden[:, 0])
    return choose(state._replace(cache=cache), logits)

  state = jax.lax.while_loop(keep_going, turn, state)
  return state.out._replace(cache=state.cache)
