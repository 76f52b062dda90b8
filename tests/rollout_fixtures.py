"""Tiny random decoders for sampler and memory-agent tests (no torch, no checkpoint files)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax import models
from memtrain_jax.models import decoder


def tiny_config(vocab_size: int = 256, **overrides) -> models.ModelConfig:
  """Two layers, 4 query heads over 2 KV heads: divisible by a 2-way tensor axis."""
  fields = dict(family="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0,
                rms_norm_eps=1e-6, eos_token_ids=(2,), max_position_embeddings=4096)
  fields.update(overrides)
  return models.ModelConfig(**fields)


def tiny_params(config: models.ModelConfig, seed: int = 0, scale: float = 0.5):
  """Random weights, scaled up so that next-token distributions are far from uniform."""
  return models.init_params(config, seed=seed, scale=scale)


def random_prompts(vocab_size: int, lengths, seed: int = 0, low: int = 3):
  rng = np.random.default_rng(seed)
  return [rng.integers(low, vocab_size, size=(n,)).astype(np.int32) for n in lengths]


class IdTokenizer:
  """A stand-in tokenizer for token-id-only tests: text is the ids joined by spaces."""

  pad_token_id = 2
  eos_token_id = 2

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [int(t) for t in text.split()]

  def decode(self, ids, skip_special_tokens=False):
    return " ".join(str(int(t)) for t in ids if not (skip_special_tokens and int(t) == 2))


def greedy_decode_program(config: models.ModelConfig, params, tokens, cache_start, steps: int):
  """A jitted `run(step_params, decode_attention=None)`: prefills `tokens` [B, T] (left padding
  before `cache_start`) with `params`, then takes `steps` greedy decode steps with `step_params`
  and the `decode_attention` kernel (static), in one `lax.scan`. Returns per step (hidden [B, D],
  logits [B, V], the chosen tokens [B])."""
  batch, prompt_len = tokens.shape

  @functools.partial(jax.jit, static_argnames="decode_attention")
  def run(step_params, decode_attention=None):
    cache = decoder.init_cache(config, batch, prompt_len + steps)
    hidden, cache = decoder.forward_with_cache(config, params, tokens, cache, write_index=0,
                                               cache_start=cache_start, empty_cache=True)

    def step(carry, i):
      hidden, cache = carry
      logits = decoder.logits_from_hidden(config, step_params, hidden[:, -1])
      token = jnp.argmax(logits, -1).astype(jnp.int32)
      hidden, cache = decoder.forward_with_cache(
          config, step_params, token[:, None], cache, write_index=prompt_len + i,
          cache_start=cache_start, decode_attention=decode_attention)
      return (hidden, cache), (hidden[:, 0], logits, token)

    return jax.lax.scan(step, (hidden[:, -1:], cache), jnp.arange(steps))[1]

  return run
