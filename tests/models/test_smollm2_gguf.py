"""The real embedded model: SmolLM2-135M-Instruct from its GGUF, against transformers' GGUF loader."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models
from tests.hf_fixtures import hf_logits

pytest.importorskip("torch")
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2(bundled_model_path):
  config, params = models.load_pretrained(bundled_model_path)
  return config, params, models.load_tokenizer(bundled_model_path)


def _chat_prompt(tokenizer, n_tokens=64):
  text = ("Read this passage and summarise it in one sentence. The Rhine rises in the Swiss Alps, "
          "flows through Germany and the Netherlands, and reaches the North Sea near Rotterdam, "
          "carrying barges of coal, grain and containers along one of Europe's busiest waterways.")
  ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                      add_generation_prompt=True, tokenize=True)
  ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  assert len(ids) >= n_tokens
  return np.asarray(ids[-n_tokens:], np.int32)[None]


def test_config_from_gguf(smollm2):
  config, _, tokenizer = smollm2
  assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
  assert config.tie_embeddings and config.rope_theta == 100000.0
  assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 2 and 2 in config.eos_token_ids
  assert "<|im_start|>" in tokenizer.chat_template


def test_same_greedy_tokens_as_transformers_gguf_loader(smollm2, bundled_model_path):
  config, params, tokenizer = smollm2
  tokens = _chat_prompt(tokenizer)
  ours = np.asarray(models.forward(config, params, jnp.asarray(tokens)))[0]
  ref = hf_logits(os.path.dirname(bundled_model_path), tokens,
                  gguf_file=os.path.basename(bundled_model_path))[0]
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
  rel = np.abs(ours - ref).max() / np.abs(ref).max()
  assert rel < 1e-3, rel


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2, bundled_model_path):
  from transformers import AutoTokenizer
  _, _, tokenizer = smollm2
  ref = AutoTokenizer.from_pretrained(os.path.dirname(bundled_model_path),
                                      gguf_file=os.path.basename(bundled_model_path))
  text = "The [MASK] placeholder, café — 1,234 apples\nnew line <|im_end|>"
  assert tokenizer.encode(text) == ref.encode(text)
  msgs = [{"role": "user", "content": "hi"}]
  assert (tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
          == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
