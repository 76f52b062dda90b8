"""GRPO update throughput and memory: the jitted train step against the same loss in torch.

SmolLM2-135M-Instruct (the embedded GGUF, float32). One update = forward + backward over a batch of
B lines x L tokens (one interaction row per line: a prompt, then a completion whose tokens carry
the loss), the PPO-clip loss with k3 KL to fixed reference log-probs (kl_coef 1e-3), global-norm
clipping and an AdamW step. The torch side is `transformers`' LlamaForCausalLM with full logits,
`torch.optim.AdamW` and the same loss written in torch; both start from the same weights and the
first-step losses are compared.

Also measured: where the JAX step's time goes (the layers' forward, their forward + backward, the
log-prob head forward + backward, the optimizer update, each jitted alone), the CPU time of each
update next to its wall time (the machine is shared: CPU seconds are what other jobs disturb least),
the compiled step's memory (`memory_analysis()`) with chunked log-probs against the same step with
full [B, L, V] logits, and the achieved FLOP/s as a fraction of a measured f32 matmul peak on this
CPU. Writes experiments/results/train_step.md.

With `--compute-dtype bfloat16` the same comparison runs in mixed precision: JAX keeps f32
parameters and optimizer state and computes in bf16 (f32 accumulation, f32 log-softmax), torch runs
its forward under `torch.autocast(bfloat16)`. Writes experiments/results/train_step_bf16.md.

Last, the trainer's real workload: one update over the ragged rows of a memory-agent document
(long prompts, short completions), packed by `rl.packing` for JAX and padded per micro-batch for
torch, as a GRPO trainer built on `transformers` does.

  .venv/bin/python -m experiments.bench_train_step [--quick] [--batch 4] [--length 256]
      [--compute-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.common import machine_line, time_fn, write_results
from memtrain_jax import models, sharding
from memtrain_jax.models import decoder
from memtrain_jax.rl import loss as loss_lib
from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.rl import packing as packing_lib
from memtrain_jax.rl import train_step as ts
from memtrain_jax.rl.logprobs import chunked_token_logprobs

LOSS = loss_lib.LossConfig(kl_coef=1e-3, kl_estimator="k3")
OPTIM = ml_collections.ConfigDict(dict(
    lr=1e-6, warmup_steps=0, schedule="constant", decay_steps=0, min_lr_ratio=0.0,
    weight_decay=0.01, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8))


def make_batch(config, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """[1, batch, length] packed arrays: one row per line, completions on the second part."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.vocab_size, (batch, length + 1)).astype(np.int32)
  prompt_lens = rng.integers(length // 4, 3 * length // 4, batch)
  slot = np.arange(length)[None, :]
  loss_mask = (slot >= prompt_lens[:, None] - 1).astype(np.float32)
  row_num_tokens = np.broadcast_to((length - prompt_lens + 1)[:, None], (batch, length)).astype(np.int32)
  advantages = np.repeat(rng.choice([-1.0, 1.0], batch)[:, None], length, 1).astype(np.float32)
  arrays = dict(tokens=tokens[:, :-1], targets=tokens[:, 1:],
                positions=np.broadcast_to(slot, (batch, length)).astype(np.int32),
                segment_ids=np.ones((batch, length), np.int32), loss_mask=loss_mask,
                advantages=advantages * loss_mask, row_num_tokens=row_num_tokens)
  return {name: value[None] for name, value in arrays.items()}


def matmul_peak_gflops(n: int = 2048, dtype=jnp.float32) -> dict[str, float]:
  """n^3 matmul GFLOP/s: numpy (f32) and jax in `dtype` with f32 accumulation and output."""
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  aj = jnp.asarray(a, dtype)
  mm = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
  jax_s = time_fn(lambda: mm(aj).block_until_ready(), repeats=3)
  flops = 2.0 * n**3
  out = {"jax": flops / jax_s / 1e9}
  if dtype == jnp.float32:
    out["numpy"] = flops / time_fn(lambda: a @ a, repeats=3) / 1e9
  return out


def full_logits_step(config, optimizer, mesh):
  """The train step with plain full logits (the baseline for the memory comparison)."""
  shardings = ts.state_shardings(config, optimizer, mesh)

  def terms_fn(params, micro):
    logits = models.forward(config, params, micro["tokens"], positions=micro["positions"],
                            segment_ids=micro["segment_ids"])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(log_probs, micro["targets"][..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return loss_lib.ppo_loss_terms(logp, micro["old_logp"], micro["advantages"], micro["loss_mask"],
                                   micro["row_num_tokens"], LOSS, ref_logp=micro["ref_logp"],
                                   entropy=entropy)

  def step(state, batch):
    _, grads, metrics = loss_lib.accumulate_gradients(terms_fn, state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return ts.TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), metrics

  return jax.jit(step, in_shardings=(shardings, ts.packed_batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def compiled_memory(jitted, state, batch) -> dict[str, float]:
  compiled = jitted.lower(state, batch).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"temp_mb": mem.temp_size_in_bytes / 2**20, "args_mb": mem.argument_size_in_bytes / 2**20,
          "out_mb": mem.output_size_in_bytes / 2**20, "alias_mb": mem.alias_size_in_bytes / 2**20,
          "flops": float(cost.get("flops", float("nan")))}


def abstract_batch(batch: int, length: int, mesh) -> dict:
  sh = ts.packed_batch_sharding(mesh)
  spec = lambda dtype: jax.ShapeDtypeStruct((1, batch, length), dtype, sharding=sh)
  names_int = ("tokens", "targets", "positions", "segment_ids", "row_num_tokens")
  names_f = ("loss_mask", "old_logp", "advantages", "ref_logp")
  return {**{n: spec(jnp.int32) for n in names_int}, **{n: spec(jnp.float32) for n in names_f}}


def timed(fn, repeats: int) -> tuple[float, float]:
  """(best wall seconds, best CPU seconds) of `fn()` over `repeats` calls after a warm-up call."""
  jax.block_until_ready(fn())
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return min(wall), min(cpu)


def step_breakdown(config, params, batch_np, optimizer, chunk: int, repeats: int
                   ) -> dict[str, tuple[float, float]]:
  """Parts of the update, each jitted alone on one micro-batch: (best wall s, best CPU s)."""
  micro = {name: jnp.asarray(value[0]) for name, value in batch_np.items()}
  fwd_kwargs = dict(positions=micro["positions"], segment_ids=micro["segment_ids"])
  hidden_fn = jax.jit(lambda p: decoder.forward_hidden(config, p, micro["tokens"], **fwd_kwargs))
  hidden = hidden_fn(params)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(hidden.shape), hidden.dtype)
  layers_grad = jax.jit(jax.grad(lambda p: jnp.sum(
      decoder.forward_hidden(config, p, micro["tokens"], **fwd_kwargs) * cotangent)))

  def head_loss(h, embed):
    logp, entropy = chunked_token_logprobs(h, embed, micro["targets"], chunk_size=chunk,
                                           compute_entropy=True, loss_mask=micro["loss_mask"],
                                           vocab_major=True)
    return jnp.sum(micro["advantages"] * logp) + 0.0 * jnp.sum(jax.lax.stop_gradient(entropy))

  head_grad = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
  opt_state = optimizer.init(params)
  grads = jax.tree.map(lambda x: 1e-3 * x, params)
  opt_step = jax.jit(lambda p, s, g: optimizer.update(g, s, p))
  parts = {
      "layers forward (`forward_hidden`)": lambda: hidden_fn(params),
      "layers forward + backward": lambda: layers_grad(params),
      "log-prob head forward + backward (loss tokens only)": lambda: head_grad(hidden, params["embed"]),
      "optimizer (clip + AdamW update)": lambda: opt_step(params, opt_state, grads),
  }
  return {name: timed(fn, repeats) for name, fn in parts.items()}


def _torch_worker(conn, builder, args):
  """Child process: builds a torch step with `builder(*args)`, then runs it on request and sends
  back (wall s, CPU s of this process, loss)."""
  fn = builder(*args)
  conn.send(getattr(fn, "padded_tokens", None))
  while conn.recv() == "step":
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = fn()
    conn.send((time.perf_counter() - start, time.process_time() - start_cpu, loss))


class TorchWorker:
  """A torch step in its own process (spawned, so torch never loads into this one).

  With torch loaded and stepping in the same process, JAX's update measured 20-40% slower
  (5.3 s alone, 6.3-7.4 s after torch steps, same process, quiet machine): the two runtimes'
  thread pools contend. Here each side runs alone while the other waits.
  """

  def __init__(self, builder, *args):
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_torch_worker, args=(child, builder, args), daemon=True)
    self._proc.start()
    self.padded_tokens = self._conn.recv()

  def step(self) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the torch process, loss) of one update."""
    self._conn.send("step")
    return self._conn.recv()

  def close(self) -> None:
    self._conn.send("stop")
    self._proc.join(timeout=60)


def torch_model_and_optimizer(path, lr):
  """The GGUF model in transformers (float32, train mode) and torch AdamW with OPTIM's settings."""
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps,
                          weight_decay=OPTIM.weight_decay)
  return model, opt


def _autocast(bf16: bool):
  """torch's mixed precision, the counterpart of f32 params + `compute_dtype='bfloat16'`."""
  import torch
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def torch_step_fn(path, batch_np, steps_lr, bf16=False):
  import torch
  model, opt = torch_model_and_optimizer(path, steps_lr)
  t = {k: torch.as_tensor(v[0]) for k, v in batch_np.items()}

  def step():
    with _autocast(bf16):
      logits = model(input_ids=t["tokens"].long()).logits.float()  # [B, L, V]
    logp = torch.log_softmax(logits, -1).gather(-1, t["targets"].long()[..., None])[..., 0]
    mask = t["loss_mask"]
    on = mask > 0
    log_ratio = torch.where(on, logp - t["old_logp"], torch.zeros_like(logp)).clamp(-20, 20)
    ratio = log_ratio.exp()
    adv = t["advantages"]
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - LOSS.clip_eps_low, 1 + LOSS.clip_eps_high) * adv)
    ref = torch.where(on, t["ref_logp"], logp)
    kl_log = (ref - logp).clamp(-20, 20)
    kl = kl_log.exp() - kl_log - 1
    token_loss = pg + LOSS.kl_coef * kl
    row_tokens = t["row_num_tokens"].float().clamp(min=1)
    num_interactions = torch.round((mask / row_tokens).sum())
    loss = (mask / row_tokens * token_loss).sum() / num_interactions.clamp(min=1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  return step


# ----------------------------------------------------------------------------------------------
# A GRPO batch of memory-agent rows: ragged lengths, long prompts, short completions.


def agent_rows(vocab: int, *, g1: int, num_chunks: int, g2: int, chunk_tokens: int,
               memory_tokens: int, seed: int = 0) -> InteractionRows:
  """The rows one document gives the trainer, with the lengths of configs/memagent_cpu.py.

  All G1 rollouts read the same chunks. Per rollout: `num_chunks` memory updates (prompt = ~130
  template and problem tokens + the previous memory + one chunk; completion = the new memory, at
  its cap 80% of the time, as measured in the CPU runs), a final answer (template + memory -> a
  short \\boxed{} answer) and one recall probe (template + memory + a masked earlier chunk)
  answered `g2` times. As in real rollouts, the first memory update's prompt ("No previous memory"
  + chunk 0) is the same for every rollout, and the g2 recall answers share their prompt. Tokens
  are random; only the lengths and that sharing matter here.
  """
  rng = np.random.default_rng(seed)
  tokens = lambda n: rng.integers(3, vocab, n).astype(np.int32)
  template, recall_template, no_memory = tokens(130), tokens(100), tokens(4)
  chunks = [tokens(int(rng.integers(int(0.9 * chunk_tokens), chunk_tokens + 1)))
            for _ in range(num_chunks)]
  prompts, completions, kinds, traj = [], [], [], []

  def add(prompt, completion_len, kind, rollout):
    prompts.append(prompt)
    completions.append(tokens(completion_len))
    kinds.append(kind)
    traj.append(rollout)

  def memory_len():
    return memory_tokens if rng.random() < 0.8 else int(rng.integers(16, memory_tokens))

  for rollout in range(g1):
    memory = no_memory
    for chunk in chunks:
      add(np.concatenate([template, memory, chunk]), memory_len(), RowKind.MEMORY_UPDATE, rollout)
      memory = completions[-1]
    add(np.concatenate([template, memory]), int(rng.integers(4, 25)), RowKind.FINAL_ANSWER,
        rollout)
    probe = np.concatenate([recall_template, memory, chunks[int(rng.integers(num_chunks))]])
    for _ in range(g2):
      add(probe, int(rng.integers(4, 25)), RowKind.RECALL, rollout)
  n = len(prompts)
  return InteractionRows(
      prompt_tokens=prompts, completion_tokens=completions,
      completion_logprobs=[np.zeros(len(c), np.float32) for c in completions],
      sample_id=np.zeros(n, np.int32), group_id=np.asarray(kinds, np.int32),
      trajectory_id=np.asarray(traj, np.int32), step=np.zeros(n, np.int32),
      kind=np.asarray(kinds, np.int8),
      advantage=rng.choice([-0.5, 0.5], n).astype(np.float32))


def rows_logprobs(packed: packing_lib.PackedBatch, values: np.ndarray, num_rows: int
                  ) -> list[np.ndarray]:
  """Per-row completion log-probs read back from packed [num_micro, micro, seq_len] values."""
  out = []
  for row in range(num_rows):
    slots = (packed.row_index == row) & (packed.loss_mask > 0)
    out.append(np.asarray(values)[slots].astype(np.float32))
  return out


def torch_rows_step_fn(path, rows: InteractionRows, ref_logp: list[np.ndarray], steps_lr: float,
                       rows_per_batch: int, sort_by_length: bool, bf16: bool = False):
  """The obvious torch GRPO update over ragged rows: micro-batches of `rows_per_batch` rows, each
  padded on the right to its longest row, full logits, gradient accumulation, one AdamW step."""
  import torch
  model, opt = torch_model_and_optimizer(path, steps_lr)
  order = list(range(len(rows)))
  if sort_by_length:
    order.sort(key=lambda r: len(rows.prompt_tokens[r]) + len(rows.completion_tokens[r]))
  batches, padded_tokens = [], 0
  for start in range(0, len(order), rows_per_batch):
    members = order[start:start + rows_per_batch]
    length = max(len(rows.prompt_tokens[r]) + len(rows.completion_tokens[r]) - 1 for r in members)
    padded_tokens += length * len(members)
    arrays = {name: np.zeros((len(members), length), dtype) for name, dtype in (
        ("tokens", np.int64), ("targets", np.int64), ("loss_mask", np.float32),
        ("old_logp", np.float32), ("ref_logp", np.float32), ("advantages", np.float32),
        ("row_tokens", np.float32))}
    for i, r in enumerate(members):
      seq = np.concatenate([rows.prompt_tokens[r], rows.completion_tokens[r]])
      p, c = len(rows.prompt_tokens[r]), len(rows.completion_tokens[r])
      arrays["tokens"][i, :len(seq) - 1] = seq[:-1]
      arrays["targets"][i, :len(seq) - 1] = seq[1:]
      span = slice(p - 1, p - 1 + c)
      arrays["loss_mask"][i, span] = 1.0
      arrays["old_logp"][i, span] = rows.completion_logprobs[r]
      arrays["ref_logp"][i, span] = ref_logp[r]
      arrays["advantages"][i, span] = rows.advantage[r]
      arrays["row_tokens"][i, :] = c
    batches.append({k: torch.as_tensor(v) for k, v in arrays.items()})
  num_rows = float(len(rows))

  def step():
    total = 0.0
    for t in batches:
      # Right padding under a causal mask: real tokens never see the padding, so no mask needed.
      with _autocast(bf16):
        logits = model(input_ids=t["tokens"]).logits.float()
      logp = torch.log_softmax(logits, -1).gather(-1, t["targets"][..., None])[..., 0]
      on = t["loss_mask"] > 0
      ratio = torch.where(on, logp - t["old_logp"], torch.zeros_like(logp)).clamp(-20, 20).exp()
      adv = t["advantages"]
      pg = -torch.minimum(ratio * adv,
                          ratio.clamp(1 - LOSS.clip_eps_low, 1 + LOSS.clip_eps_high) * adv)
      kl_log = (torch.where(on, t["ref_logp"], logp) - logp).clamp(-20, 20)
      token_loss = pg + LOSS.kl_coef * (kl_log.exp() - kl_log - 1)
      # Token mean within each row, mean over all rows of the update (interaction_mean).
      loss = (t["loss_mask"] / t["row_tokens"] * token_loss).sum() / num_rows
      loss.backward()
      total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total

  step.padded_tokens = padded_tokens
  return step


def bench_agent_rows(path, config, params, mesh, optimizer, args) -> dict:
  """One GRPO update over one document's memory-agent rows: the packed JAX step, with shared
  prompts packed once (the trainer's default) and with every row whole, against torch with
  per-micro-batch padding (rows in trajectory order, and sorted by length)."""
  rows = agent_rows(config.vocab_size, g1=4, num_chunks=3, g2=4, chunk_tokens=256,
                    memory_tokens=64)
  pack_cfgs = {share: packing_lib.PackingConfig(seq_len=args.agent_seq_len, micro_batch_size=1,
                                                num_micro_batches_multiple=1, pad_id=0,
                                                share_prompts=share) for share in (True, False)}
  packed = packing_lib.pack_rows(rows, pack_cfgs[False])
  logprob_fn = ts.make_logprob_fn(config, mesh, chunk_size=args.chunk)
  current = np.asarray(logprob_fn(params, ts.shard_batch(packed, mesh,
                                                         fields=ts.LOGPROB_BATCH_FIELDS)))
  rng = np.random.default_rng(3)
  current_rows = rows_logprobs(packed, current, len(rows))
  rows.completion_logprobs = [(c + 0.05 * rng.standard_normal(c.shape)).astype(np.float32)
                              for c in current_rows]
  ref_rows = [(c + 0.05 * rng.standard_normal(c.shape)).astype(np.float32) for c in current_rows]
  real_tokens = int(sum(len(p) + len(c) - 1 for p, c in zip(rows.prompt_tokens,
                                                           rows.completion_tokens)))
  results = {"rows": len(rows), "real_tokens": real_tokens,
             "loss_tokens": int(sum(len(c) for c in rows.completion_tokens)),
             "prompt_groups": len(packing_lib.prompt_groups(rows))}
  step = ts.make_train_step(config, LOSS, optimizer, mesh, chunk_size=args.chunk)
  variants = {}
  for share, name in ((True, "jax_shared"), (False, "jax_whole")):
    packed = packing_lib.pack_rows(rows, pack_cfgs[share])
    ref_packed = np.zeros_like(packed.old_logp)
    for row, values in enumerate(ref_rows):
      ref_packed[(packed.row_index == row) & (packed.loss_mask > 0)] = values
    batch = ts.shard_batch(packed, mesh, ref_logp=ref_packed)
    holder = {"state": ts.create_train_state(config, params, optimizer, mesh)}
    holder["state"], metrics = step(holder["state"], batch)  # compiles
    results[f"{name}_loss"] = float(metrics["loss"])
    results[f"{name}_slots"] = int(packed.segment_ids.astype(bool).sum())
    results[f"{name}_lines"] = int(packed.tokens.shape[0] * packed.tokens.shape[1])

    def jax_once(holder=holder, batch=batch):
      holder["state"], _ = step(holder["state"], batch)
      jax.block_until_ready(holder["state"])

    variants[name] = jax_once
  times = {name: [] for name in variants}
  for _ in range(args.agent_repeats):  # alternating, so that both see the same load
    for name, fn in variants.items():
      times[name].append(time_fn(fn, repeats=1, warmup=0))
  # One torch process at a time: two of them (3-4 GB each) next to the JAX states did not fit in
  # 24 GB.
  for name, sort in (("torch_in_order", False), ("torch_sorted", True)):
    worker = TorchWorker(torch_rows_step_fn, path, rows, ref_rows, OPTIM.lr,
                         args.agent_torch_rows, sort, args.compute_dtype == "bfloat16")
    # Warm-up, and the first-step loss on the same weights.
    results[f"{name}_loss"] = worker.step()[2]
    results[f"{name}_padded"] = worker.padded_tokens
    times[name] = [worker.step()[0] for _ in range(args.agent_repeats)]
    worker.close()
  results["times"] = times
  return results


def agent_rows_lines(res: dict, args) -> list[str]:
  best = {name: min(t) for name, t in res["times"].items()}
  tps = {name: res["real_tokens"] / s for name, s in best.items()}
  seq = args.agent_seq_len
  labels = {
      "jax_shared": f"memtrain_jax (default): {res['prompt_groups']} distinct prompts, shared "
                    f"ones packed once ({res['jax_shared_slots']} tokens in "
                    f"{res['jax_shared_lines']} lines of {seq}), loss tokens only through the head",
      "jax_whole": f"memtrain_jax, `share_prompts=False`: every row whole "
                   f"({res['jax_whole_slots']} tokens in {res['jax_whole_lines']} lines of {seq})",
      "torch_in_order": f"torch: {args.agent_torch_rows} rows per micro-batch in trajectory order, "
                        f"right-padded ({res['torch_in_order_padded']} slots), full logits",
      "torch_sorted": f"torch: rows sorted by length, {args.agent_torch_rows} per micro-batch "
                      f"({res['torch_sorted_padded']} slots), full logits",
  }
  out = [
      "## A GRPO update over memory-agent rows (the trainer's real workload)", "",
      f"One document's rows at the shapes of `configs/memagent_cpu.py` with recall on: G1 = 4 "
      f"rollouts x (3 memory updates + 1 final answer + 4 recall answers) = {res['rows']} rows, "
      f"{res['real_tokens']} real tokens of which {res['loss_tokens']} carry the loss (prompts "
      "of 350-450 tokens, completions of 4-64). As in real rollouts the 4 rollouts' first memory "
      "update has one prompt, and each rollout's 4 recall answers share theirs: "
      f"{res['prompt_groups']} distinct prompts. One update = forward + backward over all rows "
      "with gradient accumulation + clip + AdamW. Tokens/s counts the rows' real tokens (the "
      "same work for every implementation), whatever each one computes.", "",
      "| implementation | s / update, best | all runs (s) | row tokens/s | time vs JAX default |",
      "|---|---|---|---|---|"]
  for name, label in labels.items():
    runs = ", ".join(f"{t:.1f}" for t in res["times"][name])
    out.append(f"| {label} | {best[name]:.2f} | {runs} | {tps[name]:.0f} | "
               f"{best[name] / best['jax_shared']:.2f}x |")
  out += ["", f"**JAX / torch update throughput on memory-agent rows: "
          f"{best['torch_in_order'] / best['jax_shared']:.2f}x against rows in order, "
          f"{best['torch_sorted'] / best['jax_shared']:.2f}x against length-sorted rows** (goal: "
          f"at least 1.5x); with every row whole (no prompt sharing) "
          f"{best['torch_in_order'] / best['jax_whole']:.2f}x / "
          f"{best['torch_sorted'] / best['jax_whole']:.2f}x. First-update losses on the same "
          f"weights and rows: JAX shared {res['jax_shared_loss']:.6f}, whole "
          f"{res['jax_whole_loss']:.6f}, torch {res['torch_in_order_loss']:.6f} / "
          f"{res['torch_sorted_loss']:.6f}.", ""]
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=256)
  # One chunk covers the 256 positions: its logits are kept for the backward pass (no recompute).
  parser.add_argument("--chunk", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="2 x 128 tokens, one repeat, no AOT")
  parser.add_argument("--agent-seq-len", type=int, default=1024,
                      help="packed line length for the memory-agent rows section")
  parser.add_argument("--agent-torch-rows", type=int, default=2,
                      help="rows per torch micro-batch in the memory-agent rows section")
  parser.add_argument("--agent-repeats", type=int, default=2)
  parser.add_argument("--skip-agent-rows", action="store_true")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="bfloat16: JAX with f32 params and bf16 compute, torch under autocast; "
                           "writes train_step_bf16.md")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.length, args.repeats, args.chunk = 2, 128, 1, 64
  load_before = os.getloadavg()
  machine = machine_line()
  path = models.bundled_gguf_path()
  config, params = models.load_pretrained(path, compute_dtype=args.compute_dtype)
  bf16 = args.compute_dtype == "bfloat16"
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  optimizer = ts.make_optimizer(OPTIM)
  n_tokens = args.batch * args.length

  # Old and reference log-probs near the current policy, so ratios sit near 1 as in real GRPO.
  batch_np = make_batch(config, args.batch, args.length)
  logprob_fn = ts.make_logprob_fn(config, mesh, chunk_size=args.chunk)
  params = jax.device_put(params, sharding.param_shardings(config, mesh))
  current = np.asarray(logprob_fn(params, ts.shard_batch(batch_np, mesh, fields=ts.LOGPROB_BATCH_FIELDS)))
  rng = np.random.default_rng(1)
  batch_np["old_logp"] = (current + 0.05 * rng.standard_normal(current.shape)).astype(np.float32) * batch_np["loss_mask"]
  batch_np["ref_logp"] = (current + 0.05 * rng.standard_normal(current.shape)).astype(np.float32) * batch_np["loss_mask"]
  batch = ts.shard_batch(batch_np, mesh, ref_logp=batch_np["ref_logp"])

  # JAX: the real train step.
  step = ts.make_train_step(config, LOSS, optimizer, mesh, chunk_size=args.chunk)
  state = ts.create_train_state(config, params, optimizer, mesh)
  chunked_mem = compiled_memory(step, state, batch)
  compile_start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(state)
  first_step_s = time.perf_counter() - compile_start
  jax_first_loss = float(metrics["loss"])
  holder = {"state": state}

  def jax_once():
    holder["state"], _ = step(holder["state"], batch)
    jax.block_until_ready(holder["state"])

  full_step = full_logits_step(config, optimizer, mesh)
  abstract = ts.abstract_state(config, optimizer, mesh)
  full_mem = compiled_memory(full_step, abstract, batch)
  aot = []
  if not args.quick:
    # At scale the layers are scanned and rematerialised; then the logits are what remains, and
    # chunking shows. (Unrolled layers with remat barely save memory on XLA:CPU: 36.6 GB against
    # 38.0 GB for a plain grad at 8 x 1024, as XLA hoists the recomputation; scanned: 2.0 GB.)
    remat_config = config.replace(remat=True, scan_layers=True)
    remat_abstract = ts.abstract_state(remat_config, optimizer, mesh)
    for b, length in ((8, 1024),):
      ab = abstract_batch(b, length, mesh)
      chunked = ts.make_train_step(remat_config, LOSS, optimizer, mesh, chunk_size=args.chunk)
      aot.append((b, length, compiled_memory(chunked, remat_abstract, ab),
                  compiled_memory(full_logits_step(remat_config, optimizer, mesh), remat_abstract, ab)))

  # torch, same weights, same batch, same loss, in its own process.
  torch_worker = TorchWorker(torch_step_fn, path, batch_np, OPTIM.lr, bf16)
  torch_first_loss = torch_worker.step()[2]

  # Alternate the two (and the matmul peak) so that both see the same load from other jobs.
  jax_times, torch_times, jax_cpu, torch_cpu, peaks = [], [], [], [], []
  for _ in range(args.repeats):
    start_cpu = time.process_time()
    jax_times.append(time_fn(jax_once, repeats=1, warmup=0))
    jax_cpu.append(time.process_time() - start_cpu)
    wall, cpu, _ = torch_worker.step()
    torch_times.append(wall)
    torch_cpu.append(cpu)
    peaks.append(matmul_peak_gflops(dtype=config.dtype))
  torch_worker.close()
  del holder, state
  breakdown = step_breakdown(config, params, batch_np, optimizer, args.chunk,
                             repeats=max(2, args.repeats // 2))
  agent = None
  if not (args.quick or args.skip_agent_rows):
    agent = bench_agent_rows(path, config, params, mesh, optimizer, args)
  # The fastest step is the least disturbed by other jobs; the median shows the typical one.
  jax_s, torch_s = min(jax_times), min(torch_times)
  jax_med, torch_med = float(np.median(jax_times)), float(np.median(torch_times))
  peak = {name: max(p[name] for p in peaks) for name in peaks[0]}
  peak_best = max(peak.values())
  model_flops = 3.0 * config.flops_per_token(args.length) * n_tokens  # forward + backward
  jax_gflops = model_flops / jax_s / 1e9
  torch_gflops = model_flops / torch_s / 1e9
  load_after = os.getloadavg()

  jax_tps, torch_tps = n_tokens / jax_s, n_tokens / torch_s
  fmt_load = lambda load: ", ".join(f"{x:.2f}" for x in load)
  lines = [
      "# GRPO update throughput and memory: jitted train step vs transformers (torch)", "",
      f"SmolLM2-135M-Instruct (GGUF dequantised to float32), "
      + ("computing in float32" if not bf16 else "float32 parameters and optimizer state, "
         "computing in bfloat16 (JAX `compute_dtype='bfloat16'`, f32 accumulation; torch under "
         "`torch.autocast(bfloat16)`)") + f", one update over {args.batch} x "
      f"{args.length} tokens (forward + backward + global-norm clip + AdamW), PPO-clip loss with k3 "
      f"KL (kl_coef {LOSS.kl_coef}), {args.repeats} steps each after the compiling one, JAX and torch steps alternating. "
      "Command: `.venv/bin/python -m experiments.bench_train_step" + (" --quick" if args.quick else "")
      + (" --compute-dtype bfloat16" if bf16 else "") + "`.", "",
      f"Machine: {machine}. Load average after: {fmt_load(load_after)}. The machine is shared with "
      "other agents' jobs (2 cores), so absolute numbers move by tens of percent between runs; "
      "the two implementations ran one after the other, torch in a child process (`TorchWorker`: "
      "with both runtimes in one process, JAX's update measured 20-40% slower).",
      f"jax {jax.__version__}, optax {optax.__version__}; "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
      f"model options: scan_layers={config.scan_layers}, remat={config.remat}.", "",
      "## Throughput", "",
      "| implementation | s / update, best | s / update, median | CPU s / update, best | tokens/s (best) | model GFLOP/s (best) | fraction of matmul peak |",
      "|---|---|---|---|---|---|---|",
      f"| memtrain_jax `make_train_step` (chunked log-probs, chunk {args.chunk}) | {jax_s:.2f} | "
      f"{jax_med:.2f} | {min(jax_cpu):.2f} | {jax_tps:.0f} | {jax_gflops:.1f} | {jax_gflops / peak_best:.0%} |",
      f"| transformers LlamaForCausalLM + torch AdamW (full logits) | {torch_s:.2f} | "
      f"{torch_med:.2f} | {min(torch_cpu):.2f} | {torch_tps:.0f} | {torch_gflops:.1f} | {torch_gflops / peak_best:.0%} |", "",
      f"All steps (s): JAX {', '.join(f'{x:.2f}' for x in jax_times)}; torch "
      f"{', '.join(f'{x:.2f}' for x in torch_times)}.", "",
      f"**JAX / torch update throughput: {jax_tps / torch_tps:.2f}x on the best steps, "
      f"{torch_med / jax_med:.2f}x on the medians** (goal: at least 1.5x). "
      f"JAX first call (compile + run) {first_step_s:.1f} s. First-step loss: JAX {jax_first_loss:.6f}, "
      f"torch {torch_first_loss:.6f} (same weights and batch; difference "
      f"{abs(jax_first_loss - torch_first_loss):.1e}). CPU seconds (all threads of the process) "
      f"are the work each update did; other jobs inflate them much less than wall time: JAX / "
      f"torch CPU-time ratio {min(torch_cpu) / min(jax_cpu):.2f}x.", "",
      "## Where the JAX step's time goes", "",
      "Each part jitted alone on the same micro-batch (best of "
      f"{max(2, args.repeats // 2)}); the backward alone is the difference of the first two rows. "
      "The parts do not add up exactly to the step (XLA overlaps and fuses across them in the "
      "step).", "",
      "| part | s, best | CPU s, best |", "|---|---|---|",
      *[f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, (wall, cpu) in breakdown.items()], "",
      f"Model FLOPs = 3 x forward FLOPs (`ModelConfig.flops_per_token` at context {args.length}, "
      f"which counts full rather than causal attention) x tokens. XLA's own count for the compiled "
      f"step: {chunked_mem['flops'] / 1e9:.1f} GFLOP per update (model count "
      f"{model_flops / 1e9:.1f}). Matmul peak, 2048^3 {config.compute_dtype} with f32 "
      f"accumulation: " + ", ".join(f"{name} {value:.1f} GFLOP/s" for name, value in peak.items())
      + "; the fraction uses the larger.", "",
      "## Memory of the compiled step (`compiled.memory_analysis()`)", "",
      "Temporary buffers are the activations and workspace; arguments are params, optimizer "
      "state and batch (donated, so outputs alias them).", "",
      "| shape | log-probs | temp MB | arguments MB | output MB |", "|---|---|---|---|---|",
      f"| {args.batch} x {args.length} | chunked ({args.chunk}) | {chunked_mem['temp_mb']:.0f} | "
      f"{chunked_mem['args_mb']:.0f} | {chunked_mem['out_mb']:.0f} |",
      f"| {args.batch} x {args.length} | full logits | {full_mem['temp_mb']:.0f} | "
      f"{full_mem['args_mb']:.0f} | {full_mem['out_mb']:.0f} |",
  ]
  for b, length, chunked, full in aot:
    lines += [f"| {b} x {length}, scan + remat (compiled only) | chunked ({args.chunk}) | {chunked['temp_mb']:.0f} | "
              f"{chunked['args_mb']:.0f} | {chunked['out_mb']:.0f} |",
              f"| {b} x {length}, scan + remat (compiled only) | full logits | {full['temp_mb']:.0f} | "
              f"{full['args_mb']:.0f} | {full['out_mb']:.0f} |"]
  if agent is not None:
    lines += [""] + agent_rows_lines(agent, args)[:-1]
  lines += ["", f"Load average before the run: {fmt_load(load_before)}.", ""]
  text = "\n".join(lines)
  print(text)
  if not args.quick:  # a quick run is a smoke test; it does not replace the recorded results
    print(f"wrote {write_results('train_step_bf16.md' if bf16 else 'train_step.md', text)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
