"""Rollout benchmark: our sampler against `transformers` generate, FLOP rates, agent scaling.

    .venv/bin/python experiments/bench_rollout.py            # full run -> results/rollout.md
    .venv/bin/python experiments/bench_rollout.py --quick    # smoke run, small sizes
    .venv/bin/python experiments/bench_rollout.py --sections 2,3   # re-run some sections: their
        # parts of results/rollout.md are replaced, the rest of the file is kept
    .venv/bin/python experiments/bench_rollout.py --compute-dtype bfloat16 --sections 1,2
        # the same in bf16 (ours on the weights' bf16 copy, torch cast to bf16) -> rollout_bf16.md

Sections: (1) decode tokens/s vs torch `generate` (KV cache, greedy), SmolLM2-135M f32, batch 8
and 32, 128 new tokens; (2) decode FLOP rate as a fraction of the same sampler's prefill FLOP
rate; (3) memory-agent seconds per chunk for 2/4/8/16-chunk documents; (4) prefill with prefix
sharing on/off for G = 8; (5) programs compiled per training-like step (agent + recall).
torch is imported here only, never by the package.

The machine is shared, so every timing of ours, and torch's generate, is the best of `--repeats`
runs (the run least slowed by other jobs), and (3) runs its documents interleaved, 2, 4, 8, 16,
2, 4, ..., so that a change of load hits every length alike.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import platform
import re
import time

import jax
import numpy as np

from memtrain_jax import config_lib, models
from memtrain_jax.agent.memory_agent import (AgentConfig, AgentDocument, run_memory_agent,
                                             run_memory_recall)
from memtrain_jax.sampling import CompileCounter, Sampler, SamplerConfig
from memtrain_jax.sampling.logits import SamplingParams
from memtrain_jax.sampling.sampler import resolve_cache_dtype, resolve_decode_attention

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


def best_time(fn, repeats):
  """The shortest of `repeats` wall-clock runs of fn() (which must block), and its result."""
  best, out = None, None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
  return best, out


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
  """Memory bandwidth the way a decode step uses it, which reads weights and cache and writes
  almost nothing: GB/s of a sum over an f32 array much larger than the caches, through XLA:CPU
  (best of `repeats`). A read + write pass (`a * 1.0001`) measured about a third of this on the
  same machine, which once made decode look memory-bound when it was not."""
  x = jax.numpy.ones((megabytes * 2**20 // 4,), jax.numpy.float32)
  total = jax.jit(jax.numpy.sum)
  jax.block_until_ready(total(x))
  seconds, _ = best_time(lambda: jax.block_until_ready(total(x)), repeats)
  return x.nbytes / seconds / 1e9


def decode_bytes_per_step(config, params, batch: int, capacity: int, cache_dtype) -> int:
  """Bytes one decode step must read: every weight once (the tied embedding is the output
  projection) and the whole K/V cache, which attention reads at its full capacity."""
  weights = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
  cache = (2 * config.num_layers * batch * config.num_kv_heads * config.head_dim * capacity
           * np.dtype(cache_dtype).itemsize)
  return weights + cache


def decode_gemm_seconds(config, params, batch: int, repeats: int) -> float:
  """Seconds of one decode step's matmuls alone: `batch` rows through every weight matrix of
  every layer and the output head, the decoder's own `_dense` / `logits_from_hidden`, one jitted
  program: XLA's matmuls, or the packed-matmul kernel when `params` are the sampler's packed
  decode weights. The floor of a decode step with these matmuls, whatever else it does."""
  from memtrain_jax.models import decoder
  layers = models.unstack_layers(params)["layers"] if isinstance(params["layers"], dict) \
      else params["layers"]
  d, f = config.hidden_size, config.intermediate_size
  h, hd = config.num_heads, config.head_dim

  @jax.jit
  def gemms(params, layers, x, heads, wide):
    outs = []
    for lp in layers:
      outs += [decoder._dense(x, lp[n]) for n in ("wq", "wk", "wv", "w_gate", "w_up")]
      outs += [decoder._dense(heads, lp["wo"], in_axes=2), decoder._dense(wide, lp["w_down"])]
    return outs + [models.logits_from_hidden(config, params, x)]

  rng = np.random.default_rng(0)
  args = [jax.numpy.asarray(rng.standard_normal(shape), config.dtype)
          for shape in ((batch, d), (batch, h, hd), (batch, f))]
  jax.block_until_ready(gemms(params, layers, *args))
  seconds, _ = best_time(lambda: jax.block_until_ready(gemms(params, layers, *args)), repeats)
  return seconds


def decode_gemm_by_rows(config, params, rows, log) -> dict:
  """{rows: (kernel ms, XLA ms)} of `decode_gemm_seconds` over the sampler's packed decode weights
  and over `params`; empty when the sampler does not pack them (bf16, no compiler)."""
  packed = Sampler(config, None, SamplerConfig()).decode_params(params)
  if packed is params:
    return {}
  out = {}
  for r in rows:
    out[r] = (1e3 * decode_gemm_seconds(config, packed, r, 3),
              1e3 * decode_gemm_seconds(config, params, r, 3))
    log(f"  matmuls alone at {r} rows: kernel {out[r][0]:.1f} ms, XLA {out[r][1]:.1f} ms")
  return out


def decode_attention_seconds(config, batch: int, capacity: int, cache_dtype, repeats: int,
                             kernel=None) -> float:
  """Seconds of one decode step's attention alone: every layer's attention of `batch`
  single-token queries over a cache of `capacity` slots, all attended, one jitted program:
  XLA's `cached_attention`, or `kernel` (the sampler's decode-attention kernel, which also writes
  the token's K/V into the last slot, in place) when given. Each layer's queries are the previous
  layer's output, so the layers run one after another as in the step rather than side by side."""
  from memtrain_jax.models import decoder
  rng = np.random.default_rng(0)
  kv, hd = config.num_kv_heads, config.head_dim
  normal = lambda shape, dtype: jax.numpy.asarray(rng.standard_normal(shape), dtype)
  caches = [[normal((batch, kv, hd, capacity), cache_dtype) for _ in range(config.num_layers)],
            [normal((batch, kv, capacity, hd), cache_dtype) for _ in range(config.num_layers)]]
  q = normal((batch, 1, config.num_heads, hd), config.dtype)
  new_kv = normal((batch, kv, hd), config.dtype)
  # Every slot is attended, but the mask comes from traced row starts as in the decode step:
  # a constant mask would let XLA drop the masking from its program.
  start, end = np.zeros((batch,), np.int32), np.int32(capacity)

  @functools.partial(jax.jit, donate_argnums=(1, 2))  # the kernel updates the caches in place
  def layers(q, k_t, v, start, end):
    slots = jax.numpy.arange(capacity)
    mask = ((slots[None, :] >= start[:, None]) & (slots[None, :] < end))[:, None, :]
    k_out, v_out = [], []
    for k_layer, v_layer in zip(k_t, v):
      if kernel is None:
        q = decoder.cached_attention(q, k_layer, v_layer, mask)
      else:
        out, k_layer, v_layer = kernel(q[:, 0], new_kv, new_kv, k_layer, v_layer, start, end - 1)
        q = out[:, None]
      k_out.append(k_layer)
      v_out.append(v_layer)
    return q, k_out, v_out

  def run():
    out, caches[0], caches[1] = layers(q, *caches, start, end)
    jax.block_until_ready(out)

  run()
  seconds, _ = best_time(run, repeats)
  return seconds


def bench_vs_torch(config, params, batch, prompt_len, new_tokens, log, *, with_torch=True,
                   repeats=2):
  """(1) and (2) at one batch size: a dict of ours and torch's generate and decode-only tok/s,
  prefill and decode FLOP rates and their ratio, the decode step with XLA's kernels, and each
  side's matmuls and attention alone."""
  no_eos = config.replace(eos_token_ids=())  # both sides generate exactly `new_tokens`
  sampler = Sampler(no_eos, None, SamplerConfig(prompt_buckets=(prompt_len,),
                                                batch_buckets=(batch,), max_new_tokens=new_tokens))
  prompts = random_prompts(np.random.default_rng(batch), batch, prompt_len, config.vocab_size)
  sampler.generate(params, prompts, temperature=0.0)  # compile
  ours_total, out = best_time(lambda: sampler.generate(params, prompts, temperature=0.0), repeats)
  assert int(out.lengths.sum()) == batch * new_tokens
  # The same programs with XLA's attention and matmuls instead of the sampler's CPU kernels (when
  # it has them).
  xla_sampler = Sampler(no_eos, None, dataclasses.replace(
      sampler.config, decode_attention="xla", decode_matmul="xla", prefill_matmul="xla"))
  uses_kernels = sampler.attention_kernel is not None or sampler.packed_weights is not None
  # The two programs on their own.
  tokens = np.stack(prompts)
  start = np.zeros((batch,), np.int32)
  src = np.arange(batch, dtype=np.int32)
  cap = prompt_len + new_tokens
  # Wall clock, and the process's CPU time (all threads), which other jobs on the machine change
  # far less: a program that waits for a core is not charged for the wait.
  t_prefill = t_decode = cpu_prefill = cpu_decode = t_decode_xla = t_prefill_xla = float("inf")

  def greedy_decode(s, cache, logits, row_start):
    """Sampler s's decode program on a prefill's outputs, every row to `new_tokens`, blocking."""
    dec = s._decode(s.decode_params(params), cache, logits, row_start, np.ones((batch,), bool),
                    np.int32(new_tokens), SamplingParams.create(0.0, 1.0, 0), np.int32(0),
                    np.int32(0), s.stop)
    jax.block_until_ready(dec.tokens)

  def timed_xla_programs():
    """(prefill, decode) seconds of the sampler with XLA's kernels."""
    t0 = time.perf_counter()
    prefilled = jax.block_until_ready(xla_sampler._prefill(params, tokens, start, src,
                                                           capacity=cap))
    t1 = time.perf_counter()
    greedy_decode(xla_sampler, *prefilled)
    return t1 - t0, time.perf_counter() - t1

  if uses_kernels:
    timed_xla_programs()  # compile
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    cache, logits, row_start = sampler._prefill(sampler.prefill_params(params), tokens, start, src,
                                                capacity=cap)
    jax.block_until_ready(logits)
    t_prefill = min(t_prefill, time.perf_counter() - t0)
    cpu_prefill = min(cpu_prefill, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    greedy_decode(sampler, cache, logits, row_start)
    t_decode = min(t_decode, time.perf_counter() - t0)
    cpu_decode = min(cpu_decode, time.process_time() - c0)
    if uses_kernels:
      t_xla = timed_xla_programs()
      t_prefill_xla, t_decode_xla = min(t_prefill_xla, t_xla[0]), min(t_decode_xla, t_xla[1])
  # Decode feeds new_tokens - 1 tokens through the model (the first comes from prefill).
  decode_flops = sum(config.flops_per_token(prompt_len + i) for i in range(1, new_tokens)) * batch
  # Prefill computes logits for each prompt's last token only.
  prefill_flops = sum(config.flops_per_token(i + 1, head=i == prompt_len - 1)
                      for i in range(prompt_len)) * batch
  flop_ratio = (decode_flops / t_decode) / (prefill_flops / t_prefill)
  torch_tok_s = torch_decode_tok_s = torch_gemm_ms = float("nan")
  if with_torch:
    # In a child process: torch's thread pool and memory stay out of the later sections (with
    # torch loaded in this process, (3) measured up to 2x slower than on its own).
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
      seconds, torch_prefill, torch_gemm = pool.submit(
          torch_generate_seconds, tokens, prompt_len, new_tokens,
          config.dtype == np.dtype(jax.numpy.bfloat16), repeats).result()
    torch_tok_s = batch * new_tokens / seconds
    # As ours: the new_tokens - 1 tokens after the one that prefill's logits give.
    torch_decode_tok_s = batch * (new_tokens - 1) / (seconds - torch_prefill)
    torch_gemm_ms = 1e3 * torch_gemm
  res = dict(batch=batch, ours_tok_s=batch * new_tokens / ours_total,
             ours_decode_tok_s=batch * (new_tokens - 1) / t_decode,
             prefill_tok_s=batch * prompt_len / t_prefill, torch_tok_s=torch_tok_s,
             torch_decode_tok_s=torch_decode_tok_s, torch_gemm_ms=torch_gemm_ms,
             flop_ratio=flop_ratio, decode_gflops=decode_flops / t_decode / 1e9,
             prefill_gflops=prefill_flops / t_prefill / 1e9, load=os.getloadavg()[0],
             decode_step_ms=1e3 * t_decode / (new_tokens - 1),
             decode_step_ms_xla=1e3 * t_decode_xla / (new_tokens - 1),
             prefill_tok_s_xla=batch * prompt_len / t_prefill_xla,
             decode_attention="kernel" if sampler.attention_kernel is not None else "xla",
             decode_matmul="kernel" if sampler.decode_matmul is not None else "xla",
             prefill_matmul="kernel" if sampler.prefill_matmul is not None else "xla",
             decode_mb_per_step=decode_bytes_per_step(config, params, batch, cap,
                                                      sampler.cache_dtype) / 1e6,
             cache_dtype=sampler.cache_dtype.name,
             gemm_ms=1e3 * decode_gemm_seconds(config, sampler.decode_params(params), batch, 3),
             gemm_ms_xla=1e3 * decode_gemm_seconds(config, params, batch, 3),
             attention_ms=1e3 * decode_attention_seconds(
                 config, batch, cap, sampler.cache_dtype, 3, kernel=sampler.attention_kernel),
             attention_ms_xla=1e3 * decode_attention_seconds(config, batch, cap,
                                                             xla_sampler.cache_dtype, 3),
             xla_cache_dtype=xla_sampler.cache_dtype.name,
             cpu_flop_ratio=(decode_flops / cpu_decode) / (prefill_flops / cpu_prefill))
  log(f"  batch {batch}: {res}")
  return res


def torch_generate_seconds(tokens, prompt_len, new_tokens, bf16=False, repeats=2):
  """(generate, prefill, matmuls) seconds of `transformers`: greedy generate of `new_tokens` for
  the batch, and the forward over the prompts with a fresh KV cache (logits of the last position)
  that generate starts with, each the best of `repeats` runs as for ours (with `bf16`, the model's
  weights cast to bfloat16, torch's usual inference precision); the matmuls as
  `decode_gemm_seconds` times ours."""
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(models.bundled_gguf_path()),
      gguf_file=os.path.basename(models.bundled_gguf_path()), dtype=torch.float32)
  model.eval()
  if bf16:
    model = model.to(torch.bfloat16)
  ids = torch.as_tensor(tokens, dtype=torch.long)
  kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=2, use_cache=True)
  with torch.no_grad():
    model.generate(ids[:, :8], **dict(kwargs, max_new_tokens=4, min_new_tokens=4))  # warm up
    torch_total = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      ref = model.generate(ids, **kwargs)
      torch_total = min(torch_total, time.perf_counter() - t0)
    torch_prefill = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      # As generate's first step: logits of the last position only.
      model(ids, use_cache=True, past_key_values=transformers.DynamicCache(), logits_to_keep=1)
      torch_prefill = min(torch_prefill, time.perf_counter() - t0)
  assert ref.shape[1] - prompt_len == new_tokens
  # The same step's matmuls alone, as `decode_gemm_seconds` measures ours: batch rows through
  # every linear layer's weight and the head.
  weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
  rows = {w.shape[1]: torch.randn(len(tokens), w.shape[1], dtype=w.dtype) for w in weights}
  gemm = float("inf")
  with torch.no_grad():
    for _ in range(4):
      t0 = time.perf_counter()
      for w in weights:
        torch.nn.functional.linear(rows[w.shape[1]], w)
      gemm = min(gemm, time.perf_counter() - t0)
  return torch_total, torch_prefill, gemm


# The trainer's prompt buckets (`config_lib.base_config`) up to 1,024 tokens, for (3) and (5).
AGENT_PROMPT_BUCKETS = tuple(b for b in config_lib.base_config().sampling.prompt_buckets
                             if b <= 1024)


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


def time_programs(sampler) -> dict:
  """Makes the sampler's prefill and decode programs block and add their wall-clock seconds to the
  returned dict (keys "prefill", "decode"), and counts the prompt tokens prefill ran, padding
  included ("prefill_tokens"). Benchmark only: the sampler otherwise dispatches decode while
  prefill still runs, which these syncs give up (the memory agent's seconds per chunk measured
  the same with and without them: 2.90-3.14 against 2.99-3.15 s)."""
  seconds = {"prefill": 0.0, "decode": 0.0, "prefill_tokens": 0}

  def timed(name, program):
    def run(*args, **kwargs):
      if name == "prefill":
        seconds["prefill_tokens"] += int(np.size(args[1]))  # (params, tokens [rows, bucket], ...)
      t0 = time.perf_counter()
      out = jax.block_until_ready(program(*args, **kwargs))
      seconds[name] += time.perf_counter() - t0
      return out
    return run

  sampler._prefill = timed("prefill", sampler._prefill)
  sampler._decode = timed("decode", sampler._decode)
  return seconds


def bench_agent_scaling(config, params, tokenizer, chunk_counts, g1, chunk_tokens, memory_tokens,
                        log, repeats=2):
  """Seconds per chunk of one document of each length, and of them in prefill and in decode; the
  best of `repeats` interleaved runs."""
  short = min(16, memory_tokens)
  agent = AgentConfig(memory_max_tokens=memory_tokens, answer_max_tokens=short, recall_max_tokens=short)
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=AGENT_PROMPT_BUCKETS,
                                                     batch_buckets=(1, 2, 4, 8, 16),
                                                     max_new_tokens=memory_tokens))
  program_seconds = time_programs(sampler)
  rng = np.random.default_rng(0)
  # Warm up the shapes of a memory step and the answer step.
  run_memory_agent(sampler, params, agent_documents(tokenizer, 1, 2, chunk_tokens, rng),
                   num_rollouts=g1, config=agent, temperature=1.0, seed=0)
  docs = {n: agent_documents(tokenizer, 1, n, chunk_tokens, rng) for n in chunk_counts}
  out = {n: dict(runs=[], loads=[]) for n in chunk_counts}
  # Interleaved: a burst of load from other jobs slows one run of every length, not one length.
  for r in range(repeats):
    for n in chunk_counts:
      before = sampler.num_compiles()
      before_programs = dict(program_seconds)
      t0 = time.perf_counter()
      # The same seed every repeat: the same samples, hence the same work.
      rollout = run_memory_agent(sampler, params, docs[n], num_rollouts=g1, config=agent,
                                 temperature=1.0, seed=n)
      dt = time.perf_counter() - t0
      memory_tokens_made = sum(len(c) for c, k in zip(rollout.rows.completion_tokens,
                                                      rollout.rows.kind) if k == 0)
      res = out[n]
      res["runs"].append(dt)
      res.setdefault("prefill", []).append(program_seconds["prefill"] - before_programs["prefill"])
      res.setdefault("decode", []).append(program_seconds["decode"] - before_programs["decode"])
      res["prefill_tokens"] = program_seconds["prefill_tokens"] - before_programs["prefill_tokens"]
      res["loads"].append(os.getloadavg()[0])
      res["memory_tokens"] = memory_tokens_made
      res["compiles"] = res.get("compiles", 0) + sampler.num_compiles() - before
      log(f"  {n} chunks, run {r + 1}: {dt:.1f} s, {dt / n:.2f} s/chunk (prefill "
          f"{res['prefill'][-1] / n:.2f}, decode {res['decode'][-1] / n:.2f}), "
          f"{res['prefill_tokens'] / n:.0f} padded prompt tokens/chunk, "
          f"{memory_tokens_made} memory tokens, compiles {sampler.num_compiles() - before}, "
          f"load {res['loads'][-1]:.1f}")
  for n, res in out.items():
    best = int(np.argmin(res["runs"]))
    res.update(seconds=res["runs"][best], per_chunk=res["runs"][best] / n, load=res["loads"][best],
               prefill_per_chunk=res["prefill"][best] / n, decode_per_chunk=res["decode"][best] / n)
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
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=AGENT_PROMPT_BUCKETS,
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


SECTIONS = ("1", "2", "3", "4", "5")


def merge_sections(old_md: str, header_note: str, blocks: dict, log_lines: list) -> str:
  """`old_md` with the `## (n)` sections in `blocks` replaced, a note under the title and the new
  log lines added to the raw log; everything else is kept.

  Earlier re-run notes stay while a section they name is still theirs, so every section's figures
  keep a note that says when and under what load they were measured.
  """
  lines = old_md.rstrip("\n").split("\n")
  heads = [i for i, line in enumerate(lines) if line.startswith("## ")] + [len(lines)]
  preamble, parts = lines[:heads[0]], []
  for a, b in zip(heads[:-1], heads[1:]):
    parts.append(lines[a:b])
  notes = [line for line in preamble if line.startswith("Re-run of sections")
           and not set(re.findall(r"\((\d)\)", line.split(" on ")[0])) <= set(blocks)]
  preamble = [line for line in preamble if not line.startswith("Re-run of sections")]
  while preamble and not preamble[-1]:
    preamble.pop()
  out = preamble + [""]
  for note in notes + [header_note]:
    out += [note, ""]
  for part in parts:
    m = re.match(r"## \((\d)\)", part[0])
    if m and m.group(1) in blocks:
      part = blocks[m.group(1)]
    elif part[0].startswith("## Raw log"):
      end = max(i for i, line in enumerate(part) if line == "```")
      part = part[:end] + log_lines + part[end:]
    out += part
  return "\n".join(out) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="small sizes, a fast smoke run")
  parser.add_argument("--out", default=None,
                      help="default results/rollout.md, or rollout_bf16.md with bfloat16")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="bfloat16: our sampler on the bf16 copy of the weights "
                      "(`models.compute_params`, what the trainer samples from) with a bf16 KV "
                      "cache; torch generate with its weights cast to bf16")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help="comma-separated sections to run (1-5); with fewer than all, only "
                      "their parts of --out are replaced")
  parser.add_argument("--repeats", type=int, default=2,
                      help="runs per timing of ours (the best is reported; the machine is shared)")
  args = parser.parse_args()
  bf16 = args.compute_dtype == "bfloat16"
  if args.out is None:
    args.out = RESULTS.replace("rollout.md", "rollout_bf16.md") if bf16 else RESULTS
  sections = sorted(set(args.sections.split(",")))
  if not set(sections) <= set(SECTIONS):
    parser.error(f"--sections must be a subset of {','.join(SECTIONS)}; got {args.sections}")
  lines = []

  def log(msg):
    print(msg, flush=True)
    lines.append(msg)

  t_start = time.perf_counter()
  config, params = models.load_pretrained(models.BUNDLED_MODEL, compute_dtype=args.compute_dtype)
  params = models.compute_params(config, params)
  tokenizer = models.load_tokenizer(models.BUNDLED_MODEL)
  quick = args.quick
  new_tokens = 16 if quick else 128
  batches = (8,) if quick else (8, 32)
  prompt_len = 64 if quick else 128
  # 170-word chunks: with the 32-token memory the agent's prompts are 324-360 tokens, inside the
  # 384 bucket at every step. At 200 words they were 383-389 and some steps of each document were
  # padded to 512, more of them in some documents than in others: (3) then compared prompt
  # lengths, not the loop's cost per chunk.
  g1, chunk_words, memory_tokens = (2, 40, 8) if quick else (4, 170, 32)
  load_start = os.getloadavg()
  blocks = {}
  if "1" in sections or "2" in sections:
    log("(1)+(2) generate vs transformers; prefill vs decode FLOP rate")
    vs = [bench_vs_torch(config, params, b, prompt_len, new_tokens, log,
                         with_torch="1" in sections, repeats=args.repeats) for b in batches]
    blocks["1"] = [
        f"## (1) Generate throughput vs `transformers` generate (greedy, KV cache, {new_tokens} "
        "new tokens, random prompts of equal length, both forced to the full length)", "",
        "| batch | prompt | ours generate tok/s | torch generate tok/s | ours / torch "
        "| ours decode-only tok/s | torch decode-only tok/s | decode-only ours / torch "
        "| ours matmuls alone ms / step | torch matmuls alone ms / step |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for v in vs:
      blocks["1"].append(
          f"| {v['batch']} | {prompt_len} | {v['ours_tok_s']:.1f} | {v['torch_tok_s']:.1f} "
          f"| {v['ours_tok_s'] / v['torch_tok_s']:.2f}x | {v['ours_decode_tok_s']:.1f} "
          f"| {v['torch_decode_tok_s']:.1f} "
          f"| {v['ours_decode_tok_s'] / v['torch_decode_tok_s']:.2f}x "
          f"| {v['gemm_ms']:.0f} | {v['torch_gemm_ms']:.0f} |")
    blocks["1"] += [
        "", f"Both: the best of {args.repeats} runs. Goal: >= 2x at batch 32. Generate: prompts "
        "in, all new tokens out (prefill and decode). Decode-only: the new tokens after the first "
        "(which prefill's logits give) over the time after prefill; ours times its decode "
        "program alone, torch's is its generate time minus a forward over the same prompts with "
        "a fresh KV cache that keeps the last position's logits (what generate runs first), each "
        "the best of its runs. Matmuls alone: one "
        "decode step's weight matmuls (`batch` rows through every projection and the head) and "
        "nothing else, each framework's own matmul (ours best of 3, torch `F.linear` best of 4). "
        "When both frameworks' matmuls take about the same time, ours / torch cannot exceed "
        "torch's step time over that matmul time, whatever the rest of our step costs.", ""]
    bandwidth = read_bandwidth_gbs()
    log(f"  read bandwidth (sum over 512 MB through XLA:CPU): {bandwidth:.1f} GB/s")
    blocks["2"] = [
        "## (2) Decode FLOP rate as a fraction of prefill FLOP rate (same sampler programs)", "",
        "| batch | prefill tok/s | prefill GFLOP/s | decode ms / step | decode GFLOP/s "
        "| decode / prefill | same, by CPU time | MB read / step | memory floor ms / step "
        "| matmuls alone ms / step | attention alone ms / step "
        "| decode / prefill at the matmul floor | decode ms / step, XLA attention and matmuls "
        "| matmuls alone ms / step, XLA | attention alone ms / step, XLA "
        "| prefill tok/s, XLA matmuls | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in vs:
      floor_ms = v["decode_mb_per_step"] / 1e3 / bandwidth * 1e3
      blocks["2"].append(
          f"| {v['batch']} | {v['prefill_tok_s']:.0f} | {v['prefill_gflops']:.1f} | "
          f"{v['decode_step_ms']:.0f} | {v['decode_gflops']:.1f} | {100 * v['flop_ratio']:.0f}% | "
          f"{100 * v['cpu_flop_ratio']:.0f}% | {v['decode_mb_per_step']:.0f} | {floor_ms:.0f} | "
          f"{v['gemm_ms']:.0f} | {v['attention_ms']:.0f} | "
          f"{100 * v['flop_ratio'] * v['decode_step_ms'] / v['gemm_ms']:.0f}% | "
          f"{v['decode_step_ms_xla']:.0f} | {v['gemm_ms_xla']:.0f} | {v['attention_ms_xla']:.0f} "
          f"| {v['prefill_tok_s_xla']:.0f} | {v['load']:.1f} |")
    blocks["2"] += [
        "", "FLOPs from `ModelConfig.flops_per_token(context)` (useful work: causal attention "
        "over real context; prefill's output head for each prompt's last token only, the one "
        f"whose logits it computes). Each program's time is the best of {args.repeats} runs, "
        "prefill and decode alternating. The CPU-time ratio uses the process's CPU seconds (all "
        "threads) instead of wall-clock seconds: other jobs move it much less. Goal: >= 50% at "
        "batch 32.",
        "",
        f"Memory floor: a decode step reads every weight once and the whole K/V cache "
        f"({vs[0]['cache_dtype']}, at its full capacity: MB read / step) and writes almost "
        f"nothing, so it cannot take less than those bytes over the read bandwidth ({bandwidth:.1f} "
        "GB/s, a sum over 512 MB through XLA:CPU, best of 5). Matmuls alone: the same step's "
        "weight matmuls (every layer's projections and the head, `batch` rows each) and nothing "
        "else, through the decoder's own matmul, best of 3: the sampler's "
        f"({vs[0]['decode_matmul']}: `sampling.decode_matmul`, the CPU kernel "
        "`kernels.packed_matmul` over weights packed once, when it builds and the compute dtype "
        "is float32) and XLA's. Decode / prefill at the matmul floor "
        "is the FLOP-rate ratio a decode step that spent no time outside its matmuls would "
        "reach: the ceiling of decode / prefill with these matmul kernels. Where the matmuls "
        "alone take longer than the memory floor, the kernels' rate at `batch` rows (a fraction "
        "of their rate on prefill's thousands of rows), not memory traffic, bounds the step. "
        "Attention alone: every layer's attention over the full-capacity cache at `batch` "
        "single-token queries, the layers chained as in the step, best of 3, through the "
        f"sampler's decode attention ({vs[0]['decode_attention']}: `sampling.decode_attention`, "
        "the multi-threaded CPU kernel `kernels.decode_attention` when it builds, which also "
        "writes the token's K/V into the cache) and through XLA's `cached_attention` (its cache "
        f"in {vs[0]['xla_cache_dtype']}, the sampler's default without the kernel). The decode "
        "step itself with XLA's attention and matmuls and that cache is measured in the same loop "
        "(XLA attention and matmuls column). Decode ms minus matmuls alone minus attention alone "
        "is the rest of "
        "the step: the cache write (XLA's), norms, RoPE and choosing the token. The kernel reads "
        "only the attended slots (the step's decode attends on average to the prompt and half "
        "the new tokens), XLA's attention the whole capacity. Prefill's matmuls "
        f"({vs[0]['prefill_matmul']}: `sampling.prefill_matmul`) are the same kernel over the "
        "same packed weights, in tiles of rows that stay in cache across the weight panels; "
        "prefill with XLA's matmuls is timed in the same loop (prefill tok/s, XLA matmuls "
        "column).", ""]
    sweep = decode_gemm_by_rows(config, params, (1, 2, 4, 8, 16, 32, 64), log)
    if sweep:
      blocks["2"] += [
          "Matmuls alone by rows (the memory agent decodes 4 rows at a time, the main job's "
          "recall probes up to 16), ms per step, best of 3:", "",
          "| rows | " + " | ".join(str(r) for r in sweep) + " |",
          "|---|" + "---|" * len(sweep),
          "| packed-matmul kernel | " + " | ".join(f"{v[0]:.1f}" for v in sweep.values()) + " |",
          "| XLA | " + " | ".join(f"{v[1]:.1f}" for v in sweep.values()) + " |",
          "| XLA / kernel | " + " | ".join(f"{v[1] / v[0]:.2f}x" for v in sweep.values()) + " |",
          ""]
  if "3" in sections:
    log("(3) memory agent time per chunk")
    chunk_counts = (1, 2) if quick else (2, 4, 8, 16)
    scaling = bench_agent_scaling(config, params, tokenizer, chunk_counts, g1=g1,
                                  chunk_tokens=chunk_words, memory_tokens=memory_tokens, log=log,
                                  repeats=args.repeats)
    per_chunk = [v["per_chunk"] for v in scaling.values()]
    spread = (max(per_chunk) - min(per_chunk)) / min(per_chunk)
    blocks["3"] = [
        f"## (3) Memory agent: seconds per chunk (G1 = {g1}, sampled, memory budget "
        f"{memory_tokens} tokens, ~{chunk_words}-word chunks, the trainer's prompt buckets "
        f"{AGENT_PROMPT_BUCKETS})", "",
        "| chunks | total s | s / chunk | of which prefill | of which decode | s / chunk, every run "
        "| memory tokens generated | prefill tokens / chunk, padded | load |",
        "|---|---|---|---|---|---|---|---|---|"]
    for n, v in scaling.items():
      every = ", ".join(f"{t / n:.2f}" for t in v["runs"])
      blocks["3"].append(f"| {n} | {v['seconds']:.1f} | {v['per_chunk']:.2f} "
                         f"| {v['prefill_per_chunk']:.2f} | {v['decode_per_chunk']:.2f} | {every} | "
                         f"{v['memory_tokens']} | {v['prefill_tokens'] / n:.0f} | {v['load']:.1f} |")
    blocks["3"] += [
        "", f"Best of {args.repeats} interleaved runs per length (the same document and seed each "
        f"run). Spread of the best s/chunk (max-min)/min: {100 * spread:.0f}% (goal: flat within "
        "15%). Memory tokens generated per chunk are the same at every length, and every step's "
        "prompt falls in the same bucket (prefill tokens / chunk: the prompt tokens prefill ran, "
        "padding included, per chunk; the final answer's prompt adds a little at every length), so "
        "the work per chunk is constant; compare the every-run column and the load before reading "
        "a spread as a cost of the loop. Prefill and decode: the seconds per chunk of the sampler's "
        "prefill and decode programs, each timed to completion (the rest is the agent's host work: "
        "prompts, tokenizing, recall rows).", ""]
  if "4" in sections:
    log("(4) prefix sharing")
    sharing = bench_prefix_sharing(config, params, tokenizer, 256 if quick else 1024, 8, log)
    blocks["4"] = [
        "## (4) Prefix sharing, G = 8 samples of one prompt (prefill + first token)", "",
        "| prompt tokens | shared s | separate s | speed-up |", "|---|---|---|---|",
        f"| {256 if quick else 1024} | {sharing[True]:.2f} | {sharing[False]:.2f} | "
        f"{sharing[False] / sharing[True]:.1f}x |", "", "Goal: >= 1.5x.", ""]
  if "5" in sections:
    log("(5) programs per training-like step")
    compiles = bench_compiles_per_step(config, params, tokenizer, g1=2, g2=2 if quick else 4,
                                       chunk_tokens=chunk_words, memory_tokens=memory_tokens,
                                       log=log)
    blocks["5"] = [
        "## (5) Programs compiled per training-like step (2 documents of 2 and 3 chunks, G1 = 2, "
        f"recall G2, prompt buckets {AGENT_PROMPT_BUCKETS})", "",
        f"- first step: {compiles['first_step']} sampler programs "
        f"({compiles['first_step_lowerings']} lowerings in total, incl. any outside the sampler)",
        f"- second identical-shape step: {compiles['second_step']} lowerings",
        f"- programs: {compiles['programs']}", ""]
  blocks = {n: blocks[n] for n in sections}  # (1) and (2) are measured together
  wall = time.perf_counter() - t_start
  load_end = os.getloadavg()
  fmt_load = lambda x: "(" + ", ".join(f"{v:.2f}" for v in x) + ")"

  if len(sections) < len(SECTIONS) and os.path.exists(args.out):
    note = (f"Re-run of sections {', '.join(f'({n})' for n in sections)} on "
            f"{time.strftime('%Y-%m-%d')} ({cpu_model()}): load average at start "
            f"{fmt_load(load_start)}, at end "
            f"{fmt_load(load_end)}, wall time {wall:.0f} s; the other sections are from the runs "
            "described above.")
    with open(args.out) as f:
      text = merge_sections(f.read(), note, blocks,
                            [f"--- re-run of sections {','.join(sections)} ---", *lines])
  else:
    backend = jax.default_backend()
    default_cache = resolve_cache_dtype(
        "auto", config, backend,
        kernel_writes=resolve_decode_attention("auto", backend) is not None)
    md = [
        f"# Rollout benchmark{' (--quick smoke run)' if quick else ''}",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores visible; jax {jax.__version__}, "
        f"backend {jax.default_backend()}. Load average at start {fmt_load(load_start)}, at end "
        f"{fmt_load(load_end)}. **The machine is shared with other agents' jobs**, so absolute "
        "figures move with the load; both sides of each comparison ran in the same process, "
        "back to back.",
        "Model: SmolLM2-135M-Instruct (GGUF, dequantised to f32" + (
            "; ours samples from the bf16 copy of the weight matrices with the sampler's default "
            f"KV cache on this backend ({default_cache.name}), torch generate runs the model cast "
            "to bf16" if bf16 else "")
        + f"). Total wall time {wall:.0f} s.",
        ""]
    for n in sections:
      md += blocks[n]
    md += ["## Raw log", "", "```", *lines, "```", ""]
    text = "\n".join(md)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
