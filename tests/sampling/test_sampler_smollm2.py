"""Greedy decoding of the real SmolLM2-135M (GGUF, f32) against `transformers` generate."""

import os

import numpy as np
import pytest

from memtrain_jax import models
from memtrain_jax.agent.prompts import chat_prompt_tokens
from memtrain_jax.sampling import Sampler, SamplerConfig

pytest.importorskip("torch")
pytestmark = pytest.mark.real_model

QUESTIONS = [
    "Name three rivers of Europe and the seas they flow into.",
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "What is the capital of Australia, and why was it chosen?",
    "List the planets of the solar system in order.",
    "Give a recipe for pancakes.",
    "Summarise the plot of Hamlet.",
    "How does a bicycle stay upright?",
]


def test_greedy_matches_transformers_generate(bundled_model_path):
  import torch
  import transformers

  config, params = models.load_pretrained(bundled_model_path)
  tokenizer = models.load_tokenizer(bundled_model_path)
  prompts = [chat_prompt_tokens(tokenizer, q) for q in QUESTIONS]
  new_tokens = 64
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=(64, 128), batch_buckets=(8,),
                                                     max_new_tokens=new_tokens))
  ours = sampler.generate(params, prompts, temperature=0.0)

  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(bundled_model_path), gguf_file=os.path.basename(bundled_model_path),
      dtype=torch.float32)
  model.eval()
  torch.set_num_threads(2)
  # One left-padded batch with its attention mask: it gave the same tokens as generating each
  # prompt alone, in 11 s against 39 s.
  width = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
  attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
  for i, prompt in enumerate(prompts):
    ids[i, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
    attention_mask[i, width - len(prompt):] = 1
  with torch.no_grad():
    refs = model.generate(ids, attention_mask=attention_mask, do_sample=False,
                          max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
  for i, ref in enumerate(refs[:, width:].numpy()):
    # Both stop at <|im_end|> (kept in our completion; transformers pads after it).
    np.testing.assert_array_equal(ours.tokens[i], ref[:len(ours.tokens[i])], err_msg=f"prompt {i}")
    assert ours.stopped[i] or len(ours.tokens[i]) == new_tokens
  assert sum(len(t) for t in ours.tokens) >= 4 * new_tokens  # most answers run the full 64
