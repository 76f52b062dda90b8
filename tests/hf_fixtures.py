"""Tiny random Hugging Face checkpoints built offline with `transformers` (torch: test-time only)."""

import os

import numpy as np

TINY_SPECS = {
    # head_dim 24 (not 64), 4 q heads over 2 kv heads, untied, Llama-3 rope scaling.
    "llama": dict(arch="LlamaForCausalLM", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=160,
                  tie_word_embeddings=False, rope_theta=50000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # q/k/v bias, tied embeddings, 6 q heads over 2 kv heads (head_dim 8).
    "qwen2": dict(arch="Qwen2ForCausalLM", hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, vocab_size=150,
                  tie_word_embeddings=True, rope_theta=1000000.0),
    # per-head q/k RMSNorm, no bias, one kv head, head_dim 32 > hidden / heads.
    "qwen3": dict(arch="Qwen3ForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=140,
                  tie_word_embeddings=False, rope_theta=1000000.0),
    # heads divisible by the 2-way tensor axis of the sharding tests.
    "sharded": dict(arch="LlamaForCausalLM", hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    vocab_size=128, tie_word_embeddings=False, rope_theta=10000.0),
}


def make_tiny_checkpoint(kind: str, out_dir: str, seed: int = 0) -> str:
  import torch
  import transformers

  spec = dict(TINY_SPECS[kind])
  arch = spec.pop("arch")
  config_cls = {"LlamaForCausalLM": transformers.LlamaConfig,
                "Qwen2ForCausalLM": transformers.Qwen2Config,
                "Qwen3ForCausalLM": transformers.Qwen3Config}[arch]
  config = config_cls(**spec, max_position_embeddings=256, rms_norm_eps=1e-6,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
  torch.manual_seed(seed)
  model = getattr(transformers, arch)(config).to(torch.float32)
  # Random init leaves norms at exactly 1 and biases at 0; perturb them so the test sees them.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


def hf_logits(model_dir: str, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              gguf_file: str | None = None) -> np.ndarray:
  import torch
  import transformers

  kwargs = {"gguf_file": gguf_file} if gguf_file else {}
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
  model.eval()
  with torch.no_grad():
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), attention_mask=mask)
  return out.logits.float().numpy()
