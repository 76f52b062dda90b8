"""The embedded default: SmolLM2-135M-Instruct on the bundled WikiText articles, CPU-sized.

Command:
  memtrain train --config configs/default.py --workdir /tmp/memtrain_default
  (any field can be overridden, e.g. --config.train.num_steps=2 --config.rl.kl_coef=0.001)

Hardware: a laptop or CI runner; 2 CPU cores and 8 GB of memory are enough (f32, no accelerator).

Expected result: 3 training steps in a few minutes on 2 CPU cores (measured 2 min 05 s on an Intel
Xeon with AVX-512, 3 min 59 s on an AMD EPYC with AVX2, peak RSS 6.4-6.6 GiB, of which 0.5 GiB is
f32 decoding's packed copy of the weights, `sampling.decode_matmul`; the README shows the console
output and experiments/results/default_run_curves.png the curves). Each step: 1 document x G1=2
trajectories x <= 3 chunks of 128 tokens, plus one recall
probe per trajectory with G2=2 answers. Rewards stay at 0: a 135M model does not reconstruct masked
entities, so with DAPO filtering off (below) the advantages, loss and gradient are 0 and the run
checks the plumbing, not the method. The workdir then holds TensorBoard events, metrics.jsonl,
rollout dumps, Orbax checkpoints and an exported HF directory.
"""

from memtrain_jax import config_lib


def get_config():
  cfg = config_lib.base_config()
  cfg.model.path = "bundled:smollm2-135m-instruct"

  cfg.data.num_documents = 8
  cfg.data.retrieval.num_related = 3
  cfg.data.assembly.num_passages = 8
  cfg.data.assembly.min_tokens = 200
  cfg.data.assembly.max_tokens = 380
  cfg.data.chunking.chunk_size = 128
  cfg.data.chunking.max_chunks = 3

  cfg.agent.prompt_max_tokens = 256
  cfg.agent.memory_max_tokens = 48
  cfg.agent.answer_max_tokens = 32
  cfg.agent.recall_max_tokens = 32
  # SmolLM2-135M rarely writes \boxed{} on its own; prefilling it lets its answers be scored.
  cfg.agent.answer_prefix = "\\boxed{"

  cfg.objectives.end_to_end.num_rollouts = 2  # G1
  cfg.objectives.recall.num_samples = 2  # G2

  cfg.rl.packing.seq_len = 512  # >= 256 + 128 + 48 + 48 - 1
  # The paper's KL term doubles the forward passes of an update; the tiny-model tests and the paper
  # configs run it, the CPU smoke run skips it (and keeps no reference copy).
  cfg.rl.kl_coef = 0.0
  # Two 512-token lines per micro-batch: fewer, larger matmuls, and the steps' varying row counts
  # land on fewer distinct micro-batch counts, so fewer update programs compile (measured: 2 min
  # 38 s to 2 min 46 s for the whole run against 3 min 27 s with one line, where step 3 compiled
  # a new update program).
  cfg.rl.packing.micro_batch_size = 2
  cfg.rl.packing.num_micro_batches_multiple = 2
  cfg.rl.packing.logprob_chunk_size = 128

  # A 135M model almost never reconstructs the entity, so nearly every group has equal rewards;
  # with the paper's DAPO filtering on, no row would be trained and the update path would never
  # run on CPU. Off here, so the smoke run exercises the whole step.
  cfg.rl.advantage.drop_degenerate_e2e = False
  cfg.rl.advantage.drop_degenerate_recall = False

  cfg.optim.warmup_steps = 1  # a 3-step smoke run has no room for the paper's 20-step warm-up

  cfg.train.num_steps = 3
  cfg.train.batch_documents = 1
  cfg.train.dump_rollouts_every = 1
  cfg.train.dump_rollouts_count = 1

  cfg.checkpoint.every = 2
  cfg.checkpoint.keep = 2
  return cfg
