"""RoPE's cos/sin: their values, and one computation of them per program (not one per use)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models
from memtrain_jax.models import decoder
from tests.rollout_fixtures import tiny_config, tiny_params

CONFIG = tiny_config(num_layers=4)


def test_cos_sin_match_a_numpy_reference():
  positions = np.array([[0, 1, 7, 300], [5, 5, 2, 4095]], np.int32)
  cos, sin = decoder.rope_cos_sin(CONFIG, jnp.asarray(positions))
  dim = CONFIG.head_dim
  inv_freq = 1.0 / CONFIG.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  angles = positions[..., None].astype(np.float64) * inv_freq
  angles = np.concatenate([angles, angles], axis=-1)
  assert cos.shape == sin.shape == (2, 4, dim)
  # float32 angles up to 4095 rad carry ~2e-4 of rounding; a wrong layout is off by O(1).
  np.testing.assert_allclose(np.asarray(cos), np.cos(angles), atol=1e-3)
  np.testing.assert_allclose(np.asarray(sin), np.sin(angles), atol=1e-3)


def _count(op: str, compiled_text: str) -> int:
  return len(re.findall(rf" {op}\(", compiled_text))


@pytest.mark.parametrize("program", ["forward", "gradient", "decode step"])
def test_cos_and_sin_are_computed_once_per_program(program):
  """Without the barrier in `rope_cos_sin` XLA fused cos and sin into every layer's query and key
  fusions (SmolLM2's prefill program held 150 copies of each, ~4% of its time)."""
  params = tiny_params(CONFIG)
  tokens = jnp.asarray(np.arange(24).reshape(2, 12) % CONFIG.vocab_size, jnp.int32)
  if program == "forward":
    fn, args = jax.jit(lambda p, t: models.forward(CONFIG, p, t)), (params, tokens)
  elif program == "gradient":
    loss = lambda p, t: jnp.mean(models.forward(CONFIG, p, t) ** 2)
    fn, args = jax.jit(jax.grad(loss)), (params, tokens)
  else:
    cache = models.init_cache(CONFIG, batch=2, capacity=16)
    fn = jax.jit(lambda p, t, c, slot, start: models.forward_with_cache(
        CONFIG, p, t, c, write_index=slot, cache_start=start))
    args = (params, tokens[:, :1], cache, jnp.int32(12), jnp.zeros((2,), jnp.int32))
  text = fn.lower(*args).compile().as_text()
  assert (_count("sine", text), _count("cosine", text)) == (1, 1)
