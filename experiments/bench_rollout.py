"""Rollout benchmark: our sampler against `transformers` generate, FLOP rates, agent scaling.

    .venv/bin/python experiments/bench_rollout.py            # full run -> results/rollout.md
    .venv/bin/python experiments/bench_rollout.py --quick    # smoke run, small sizes

Sections: (1) decode tokens/s vs torch `generate` (KV cache, greedy), SmolLM2-135M f32, batch 8
and 32, 128 new tokens; (2) decode FLOP rate as a fraction of the same sampler's prefill FLOP
rate; (3) memory-agent seconds per chunk for 2/4/8/16-chunk documents; (4) prefill with prefix
sharing on/off for G = 8; (5) programs compiled per training-like step (agent + recall).
torch is imported here only, never by the package.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from memtrain_jax import models
from memtrain_jax.agent.memory_agent import (AgentConfig, AgentDocument, run_memory_agent,
                                             run_memory_recall)
from memtrain_jax.sampling import CompileCounter, Sampler, SamplerConfig
from memtrain_jax.sampling.logits import SamplingParams

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rollout.md")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def random_prompts(rng, batch, length, vocab):
  return [rng.integers(100, vocab - 100, size=(length,)).astype(np.int32) for _ in range(batch)]


def bench_vs_torch(config, params, batch, prompt_len, new_tokens, log):
  """(ours generate tok/s, ours decode-only tok/s, prefill tok/s, torch tok/s, flop ratio)."""
  import torch
  import transformers

  no_eos = config.replace(eos_token_ids=())  # both sides generate exactly `new_tokens`
  sampler = Sampler(no_eos, None, SamplerConfig(prompt_buckets=(prompt_len,),
                                                batch_buckets=(batch,), max_new_tokens=new_tokens))
  prompts = random_prompts(np.random.default_rng(batch), batch, prompt_len, config.vocab_size)
  sampler.generate(params, prompts, temperature=0.0)  # compile
  t0 = time.perf_counter()
  out = sampler.generate(params, prompts, temperature=0.0)
  ours_total = time.perf_counter() - t0
  assert int(out.lengths.sum()) == batch * new_tokens
  # The two programs on their own.
  tokens = np.stack(prompts)
  start = np.zeros((batch,), np.int32)
  src = np.arange(batch, dtype=np.int32)
  cap = prompt_len + new_tokens
  t0 = time.perf_counter()
  cache, logits, row_start = sampler._prefill(params, tokens, start, src, capacity=cap)
  jax.block_until_ready(logits)
  t_prefill = time.perf_counter() - t0
  t0 = time.perf_counter()
  dec = sampler._decode(params, cache, logits, row_start, np.ones((batch,), bool),
                        np.int32(new_tokens), SamplingParams.create(0.0, 1.0, 0), np.int32(0),
                        np.int32(0), sampler.stop)
  jax.block_until_ready(dec.tokens)
  t_decode = time.perf_counter() - t0
  del dec
  # Decode feeds new_tokens - 1 tokens through the model (the first comes from prefill).
  decode_flops = sum(config.flops_per_token(prompt_len + i) for i in range(1, new_tokens)) * batch
  prefill_flops = sum(config.flops_per_token(i + 1) for i in range(prompt_len)) * batch
  flop_ratio = (decode_flops / t_decode) / (prefill_flops / t_prefill)

  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(models.bundled_gguf_path()),
      gguf_file=os.path.basename(models.bundled_gguf_path()), dtype=torch.float32)
  model.eval()
  ids = torch.as_tensor(tokens, dtype=torch.long)
  kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=2, use_cache=True)
  with torch.no_grad():
    model.generate(ids[:, :8], **dict(kwargs, max_new_tokens=4, min_new_tokens=4))  # warm up
    t0 = time.perf_counter()
    ref = model.generate(ids, **kwargs)
    torch_total = time.perf_counter() - t0
  assert ref.shape[1] - prompt_len == new_tokens
  res = dict(batch=batch, ours_tok_s=batch * new_tokens / ours_total,
             ours_decode_tok_s=batch * (new_tokens - 1) / t_decode,
             prefill_tok_s=batch * prompt_len / t_prefill, torch_tok_s=batch * new_tokens / torch_total,
             flop_ratio=flop_ratio, decode_gflops=decode_flops / t_decode / 1e9,
             prefill_gflops=prefill_flops / t_prefill / 1e9, load=os.getloadavg()[0])
  log(f"  batch {batch}: {res}")
  return res


def agent_documents(tokenizer, num_docs, num_chunks, chunk_tokens, rng):
  words = tokenizer.convert_ids_to_tokens(list(range(1000, 6000)))
  words = [w.replace("Ġ", "") for w in words if w.startswith("Ġ") and w[1:].isalpha()]
  docs = []
  for d in range(num_docs):
    chunks = [" ".join(rng.choice(words, size=chunk_tokens)) + " [MASK] lived in Paris."
              for _ in range(num_chunks)]
    docs.append(AgentDocument(f"doc{d}", AgentConfig().mask_problem, chunks, ["x"],
                              recall_candidates=[["Paris"]] * num_chunks))
  return docs


def bench_agent_scaling(config, params, tokenizer, chunk_counts, g1, chunk_tokens, memory_tokens,
                        log):
  short = min(16, memory_tokens)
  agent = AgentConfig(memory_max_tokens=memory_tokens, answer_max_tokens=short, recall_max_tokens=short)
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=(256, 512, 1024),
                                                     batch_buckets=(1, 2, 4, 8, 16),
                                                     max_new_tokens=memory_tokens))
  rng = np.random.default_rng(0)
  # Warm up the shapes of a memory step and the answer step.
  run_memory_agent(sampler, params, agent_documents(tokenizer, 1, 2, chunk_tokens, rng),
                   num_rollouts=g1, config=agent, temperature=1.0, seed=0)
  out = {}
  for n in chunk_counts:
    docs = agent_documents(tokenizer, 1, n, chunk_tokens, rng)
    t0 = time.perf_counter()
    rollout = run_memory_agent(sampler, params, docs, num_rollouts=g1, config=agent,
                               temperature=1.0, seed=n)
    dt = time.perf_counter() - t0
    memory_tokens_made = sum(len(c) for c, k in zip(rollout.rows.completion_tokens,
                                                    rollout.rows.kind) if k == 0)
    out[n] = dict(seconds=dt, per_chunk=dt / n, memory_tokens=memory_tokens_made,
                  load=os.getloadavg()[0])
    log(f"  {n} chunks: {out[n]}")
  return out


def bench_prefix_sharing(config, params, tokenizer, prompt_len, group, log):
  prompts = random_prompts(np.random.default_rng(1), 1, prompt_len, config.vocab_size)
  times = {}
  for share in (True, False):
    sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=(prompt_len,),
                                                       batch_buckets=(1, group),
                                                       max_new_tokens=1, share_prefix=share))
    sampler.generate(params, prompts, num_samples=group, max_new_tokens=1)  # compile
    t0 = time.perf_counter()
    sampler.generate(params, prompts, num_samples=group, max_new_tokens=1)
    times[share] = time.perf_counter() - t0
  log(f"  prefill G={group}: shared {times[True]:.2f}s, separate {times[False]:.2f}s")
  return times


def bench_compiles_per_step(config, params, tokenizer, g1, g2, chunk_tokens, memory_tokens, log):
  short = min(16, memory_tokens)
  agent = AgentConfig(memory_max_tokens=memory_tokens, answer_max_tokens=short, recall_max_tokens=short)
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=(256, 512, 1024),
                                                     batch_buckets=(1, 2, 4, 8, 16),
                                                     max_new_tokens=memory_tokens))
  rng = np.random.default_rng(2)
  docs = [agent_documents(tokenizer, 1, n, chunk_tokens, rng)[0] for n in (2, 3)]

  def step(seed):
    rollout = run_memory_agent(sampler, params, docs, num_rollouts=g1, config=agent,
                               temperature=1.0, seed=seed)
    run_memory_recall(sampler, params, docs, rollout, num_samples=g2, config=agent,
                      temperature=1.0, seed=seed)

  with CompileCounter() as first:
    step(0)
  with CompileCounter() as second:
    step(1)
  res = dict(first_step=sampler.num_compiles(), first_step_lowerings=first.count,
             second_step=second.count, programs=list(sampler.programs_built))
  log(f"  compiles: {res}")
  return res


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="small sizes, a fast smoke run")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  lines = []

  def log(msg):
    print(msg, flush=True)
    lines.append(msg)

  t_start = time.perf_counter()
  config, params = models.load_pretrained(models.BUNDLED_MODEL)
  tokenizer = models.load_tokenizer(models.BUNDLED_MODEL)
  quick = args.quick
  new_tokens = 16 if quick else 128
  batches = (8,) if quick else (8, 32)
  load_start = os.getloadavg()
  log("(1)+(2) generate vs transformers; prefill vs decode FLOP rate")
  vs = [bench_vs_torch(config, params, b, 64 if quick else 128, new_tokens, log) for b in batches]
  log("(3) memory agent time per chunk")
  chunk_counts = (1, 2) if quick else (2, 4, 8, 16)
  scaling = bench_agent_scaling(config, params, tokenizer, chunk_counts, g1=2 if quick else 4,
                                chunk_tokens=40 if quick else 200,
                                memory_tokens=8 if quick else 32, log=log)
  log("(4) prefix sharing")
  sharing = bench_prefix_sharing(config, params, tokenizer, 256 if quick else 1024, 8, log)
  log("(5) programs per training-like step")
  compiles = bench_compiles_per_step(config, params, tokenizer, g1=2, g2=2 if quick else 4,
                                     chunk_tokens=40 if quick else 200,
                                     memory_tokens=8 if quick else 32, log=log)
  wall = time.perf_counter() - t_start

  per_chunk = [v["per_chunk"] for v in scaling.values()]
  spread = (max(per_chunk) - min(per_chunk)) / min(per_chunk)
  md = [
      f"# Rollout benchmark{' (--quick smoke run)' if quick else ''}",
      "",
      f"CPU: {cpu_model()}, {os.cpu_count()} cores visible; jax {jax.__version__}, "
      f"backend {jax.default_backend()}. Load average at start {load_start}, at end "
      f"{os.getloadavg()}. **The machine is shared with other agents' jobs**, so absolute figures "
      "move with the load; both sides of each comparison ran in the same process, back to back.",
      f"Model: SmolLM2-135M-Instruct (GGUF, dequantised to f32). Total wall time {wall:.0f} s.",
      "",
      f"## (1) Generate throughput vs `transformers` generate (greedy, KV cache, {new_tokens} new "
      "tokens, random prompts of equal length, both forced to the full length)",
      "",
      "| batch | prompt | ours generate tok/s | ours decode-only tok/s | torch generate tok/s | ours / torch |",
      "|---|---|---|---|---|---|",
  ]
  prompt_len = 64 if quick else 128
  for v in vs:
    md.append(f"| {v['batch']} | {prompt_len} | {v['ours_tok_s']:.1f} | {v['ours_decode_tok_s']:.1f} "
              f"| {v['torch_tok_s']:.1f} | {v['ours_tok_s'] / v['torch_tok_s']:.2f}x |")
  md += ["", "Goal: >= 2x at batch 32.", "",
         "## (2) Decode FLOP rate as a fraction of prefill FLOP rate (same sampler programs)", "",
         "| batch | prefill tok/s | prefill GFLOP/s | decode GFLOP/s | decode / prefill |",
         "|---|---|---|---|---|"]
  for v in vs:
    md.append(f"| {v['batch']} | {v['prefill_tok_s']:.0f} | {v['prefill_gflops']:.1f} | "
              f"{v['decode_gflops']:.1f} | {100 * v['flop_ratio']:.0f}% |")
  md += ["", "FLOPs from `ModelConfig.flops_per_token(context)` (useful work: causal attention "
         "over real context). Goal: >= 50% at batch 32.", "",
         f"## (3) Memory agent: seconds per chunk (G1 = {2 if quick else 4}, sampled, memory budget "
         f"{8 if quick else 32} tokens, ~{40 if quick else 200}-word chunks)", "",
         "| chunks | total s | s / chunk | memory tokens generated | load |", "|---|---|---|---|---|"]
  for n, v in scaling.items():
    md.append(f"| {n} | {v['seconds']:.1f} | {v['per_chunk']:.2f} | {v['memory_tokens']} | "
              f"{v['load']:.1f} |")
  md += ["", f"Spread of s/chunk (max-min)/min: {100 * spread:.0f}% (goal: flat within 15%). Memory "
         "tokens generated per chunk are the same at every length, so the work per chunk is constant; "
         "compare the load column before reading a spread as a cost of the loop.",
         "", "## (4) Prefix sharing, G = 8 samples of one prompt (prefill + first token)", "",
         "| prompt tokens | shared s | separate s | speed-up |", "|---|---|---|---|",
         f"| {256 if quick else 1024} | {sharing[True]:.2f} | {sharing[False]:.2f} | "
         f"{sharing[False] / sharing[True]:.1f}x |", "", "Goal: >= 1.5x.", "",
         "## (5) Programs compiled per training-like step (2 documents of 2 and 3 chunks, G1 = 2, "
         "recall G2)", "",
         f"- first step: {compiles['first_step']} sampler programs "
         f"({compiles['first_step_lowerings']} lowerings in total, incl. any outside the sampler)",
         f"- second identical-shape step: {compiles['second_step']} lowerings",
         f"- programs: {compiles['programs']}", "",
         "## Raw log", "", "```", *lines, "```", ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(md))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
