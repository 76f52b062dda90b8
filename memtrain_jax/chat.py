"""`memtrain chat`: load a model (the embedded SmolLM2-135M by default) and answer one message.

A quick way to check an install or a checkpoint: greedy decoding with the plain full-sequence
forward, no sampler needed.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax import models


def greedy_reply(config, params, tokenizer, message: str, max_new_tokens: int = 48) -> str:
  ids = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                      add_generation_prompt=True, tokenize=True)
  ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  stop = set(config.eos_token_ids) | {tokenizer.eos_token_id}
  # One padded length for every step, so the forward compiles once.
  capacity = len(ids) + max_new_tokens
  step = jax.jit(lambda p, t, n: jnp.argmax(models.forward(config, p, t)[0, n - 1]))
  tokens = np.zeros((1, capacity), np.int32)
  tokens[0, :len(ids)] = ids
  n, out = len(ids), []
  for _ in range(max_new_tokens):
    nxt = int(step(params, jnp.asarray(tokens), n))
    if nxt in stop:
      break
    out.append(nxt)
    tokens[0, n] = nxt
    n += 1
  return tokenizer.decode(out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="memtrain chat", description=__doc__)
  parser.add_argument("--model", default=models.BUNDLED_MODEL,
                      help="HF directory, .gguf file, or the embedded default")
  parser.add_argument("--message", default="In one sentence, what does a memory agent do?")
  parser.add_argument("--max-new-tokens", type=int, default=48)
  args = parser.parse_args(argv)
  start = time.time()
  config, params = models.load_pretrained(args.model)
  tokenizer = models.load_tokenizer(args.model)
  print(f"loaded {config.family} ({config.num_params() / 1e6:.0f}M params) in {time.time() - start:.1f}s")
  print(f"user: {args.message}")
  print(f"assistant: {greedy_reply(config, params, tokenizer, args.message, args.max_new_tokens)}")
  return 0
