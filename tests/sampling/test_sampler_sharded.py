"""A rollout on 8 virtual CPU devices gives the same greedy output as one device."""

import jax
import numpy as np
import pytest

from memtrain_jax import sharding
from memtrain_jax.sampling import Sampler, SamplerConfig
from tests.rollout_fixtures import IdTokenizer, random_prompts, tiny_config, tiny_params


# With a 'tensor' axis the weights are split and XLA does the decode matmuls; without one, the
# packed-matmul kernel runs per batch shard.
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (4, 1, 2), (2, 4, 1)])
def test_sharded_greedy_equals_single_device(mesh_shape):
  assert jax.device_count() == 8
  config = tiny_config()
  params = tiny_params(config)
  sampler_config = SamplerConfig(prompt_buckets=(16,), batch_buckets=(1, 2, 4, 8),
                                 max_new_tokens=8)
  prompts = random_prompts(config.vocab_size, [5, 9, 14], seed=3)
  single = Sampler(config, IdTokenizer(), sampler_config).generate(
      params, prompts, num_samples=2, temperature=0.0)

  mesh = sharding.make_mesh(mesh_shape)
  placed = jax.device_put(params, sharding.param_shardings(config, mesh, "rollout"))
  sharded_sampler = Sampler(config, IdTokenizer(), sampler_config, mesh=mesh)
  sharded = sharded_sampler.generate(placed, prompts, num_samples=2, temperature=0.0)
  for a, b in zip(single.tokens, sharded.tokens):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(single.logprobs, sharded.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The batch is padded to a multiple of the batch shards (data x fsdp).
  shards = mesh_shape[0] * mesh_shape[1]
  assert all(p[1][0] % shards == 0 for p in sharded_sampler.programs_built if p[0] != "pack")
  whole_weights = mesh_shape[2] == 1  # the matmul kernel needs them whole
  assert (sharded_sampler.decode_matmul is not None) == whole_weights
  assert (sharded_sampler.prefill_matmul is not None) == whole_weights


def test_sharded_sampling_equals_single_device():
  """Sampling (CDF inversion over a vocabulary sharded on 'tensor', top-k/top-p bisection)."""
  config = tiny_config()
  params = tiny_params(config)
  sampler_config = SamplerConfig(prompt_buckets=(16,), batch_buckets=(1, 2, 4, 8),
                                 max_new_tokens=8)
  prompts = random_prompts(config.vocab_size, [5, 9, 14], seed=3)
  mesh = sharding.make_mesh((2, 2, 2))
  placed = jax.device_put(params, sharding.param_shardings(config, mesh, "rollout"))
  single_sampler = Sampler(config, IdTokenizer(), sampler_config)
  sharded_sampler = Sampler(config, IdTokenizer(), sampler_config, mesh=mesh)
  for knobs in (dict(temperature=1.0), dict(temperature=0.8, top_p=0.9, top_k=20)):
    single = single_sampler.generate(params, prompts, num_samples=2, seed=4, **knobs)
    sharded = sharded_sampler.generate(placed, prompts, num_samples=2, seed=4, **knobs)
    for a, b in zip(single.tokens, sharded.tokens):
      np.testing.assert_array_equal(a, b, err_msg=str(knobs))
    for a, b in zip(single.sampling_logprobs, sharded.sampling_logprobs):
      # float32: the vocabulary-sharded sums run in another order than on one device.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
