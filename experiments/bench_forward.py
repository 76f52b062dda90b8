"""Prefill throughput of the JAX forward against `transformers` (torch) on the same CPU.

SmolLM2-135M-Instruct (the embedded GGUF, dequantised to float32), batch 8 x 512 tokens, full
logits for every position in both frameworks. Writes experiments/results/forward.md.

  .venv/bin/python -m experiments.bench_forward [--quick] [--batch 8] [--length 512]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import machine_line, time_fn, write_results
from memtrain_jax import models


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="batch 2 x 128, one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.length, args.repeats = 2, 128, 1
  machine = machine_line()
  path = models.bundled_gguf_path()
  config, params = models.load_pretrained(path)
  tokens = np.random.default_rng(0).integers(3, config.vocab_size, (args.batch, args.length)).astype(np.int32)
  n_tokens = args.batch * args.length

  fwd = jax.jit(lambda p, t: models.forward(config, p, t))
  tok_j = jnp.asarray(tokens)
  compile_start = time.perf_counter()
  fwd(params, tok_j).block_until_ready()
  compile_s = time.perf_counter() - compile_start
  jax_s = time_fn(lambda: fwd(params, tok_j).block_until_ready(), repeats=args.repeats)
  jax_logits = np.asarray(fwd(params, tok_j))

  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  tok_t = torch.as_tensor(tokens, dtype=torch.long)

  def torch_forward():
    with torch.inference_mode():
      return hf(input_ids=tok_t).logits

  torch_s = time_fn(torch_forward, repeats=args.repeats)
  torch_logits = torch_forward().numpy()
  rel_err = float(np.abs(jax_logits - torch_logits).max() / np.abs(torch_logits).max())

  flops = config.flops_per_token(args.length // 2) * n_tokens  # mean causal context is length / 2
  jax_tps, torch_tps = n_tokens / jax_s, n_tokens / torch_s
  ratio = jax_tps / torch_tps
  lines = [
      "# Forward (prefill) throughput: JAX vs transformers (torch)",
      "",
      f"SmolLM2-135M-Instruct (GGUF dequantised to float32), batch {args.batch} x {args.length} "
      "tokens, logits for every position, median of "
      f"{args.repeats} runs after a warm-up. Command: `.venv/bin/python -m experiments.bench_forward"
      f"{' --quick' if args.quick else ''}`.",
      "",
      f"Machine: {machine}. jax {jax.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}.",
      "",
      "| implementation | seconds | tokens/s | GFLOP/s |",
      "|---|---|---|---|",
      f"| memtrain_jax `models.forward` (jit) | {jax_s:.3f} | {jax_tps:,.0f} | {flops / jax_s / 1e9:.1f} |",
      f"| transformers `LlamaForCausalLM` | {torch_s:.3f} | {torch_tps:,.0f} | {flops / torch_s / 1e9:.1f} |",
      "",
      f"**JAX / torch throughput ratio: {ratio:.2f}x** (goal: at least 1.0x). JAX compile time "
      f"{compile_s:.1f} s (once per shape). Max relative logit difference between the two: {rel_err:.1e}.",
      "",
  ]
  text = "\n".join(lines)
  print(text)
  if not args.quick:
    write_results("forward.md", text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
