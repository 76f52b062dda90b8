"""ModelConfig.flops_per_token against a count over the initialised weights."""

import jax
import pytest

from memtrain_jax import models
from tests.rollout_fixtures import tiny_config


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token_counts_every_matmul_weight_and_the_attention(tie):
  config = tiny_config(tie_embeddings=tie)
  params = models.init_params(config, seed=0)
  # Every matrix inside the layers is a projection each token multiplies through.
  layer_weights = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params["layers"])
                      if leaf.ndim >= 2)
  head = config.vocab_size * config.hidden_size
  context = 10
  # Scores and values: 2 FLOPs per multiply-add, head_dim per key per query head, each.
  attention = 2 * 2 * config.num_layers * config.num_heads * config.head_dim * context
  assert config.flops_per_token(context) == 2 * (layer_weights + head) + attention
  # A prefill position whose logits are not computed costs the layers alone.
  assert config.flops_per_token(context, head=False) == 2 * layer_weights + attention
  assert (config.flops_per_token(context + 1) - config.flops_per_token(context)
          == 4 * config.num_layers * config.num_heads * config.head_dim)
