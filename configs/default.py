"""The embedded default: SmolLM2-135M-Instruct on the bundled WikiText articles, CPU-sized.

Command:
  memtrain train --config configs/default.py --workdir /tmp/memtrain_default
  (any field can be overridden, e.g. --config.train.num_steps=2 --config.rl.kl_coef=0)

Hardware: a laptop or CI runner; 2 CPU cores and ~4 GB of memory are enough (f32, no accelerator).

Expected result: 3 training steps finish in a few minutes (rollouts dominate: 2 documents x G1=2
trajectories x <= 3 chunks, plus G2=2 recall samples per trajectory). Losses, KL and grad norms are
finite; rewards stay near 0 because a 135M model rarely reconstructs masked entities, and the
paper's lr (1e-6) barely moves the weights in 3 steps. The workdir then holds TensorBoard events,
metrics.jsonl, rollout dumps, Orbax checkpoints and an exported HF directory. This run checks the
plumbing, not the method.
"""

from memtrain_jax import config_lib


def get_config():
  cfg = config_lib.base_config()
  cfg.model.path = "bundled:smollm2-135m-instruct"

  cfg.data.num_documents = 8
  cfg.data.retrieval.num_related = 3
  cfg.data.assembly.num_passages = 8
  cfg.data.assembly.min_tokens = 300
  cfg.data.assembly.max_tokens = 560
  cfg.data.chunking.chunk_size = 192
  cfg.data.chunking.max_chunks = 3

  cfg.agent.prompt_max_tokens = 256
  cfg.agent.memory_max_tokens = 64
  cfg.agent.answer_max_tokens = 32
  cfg.agent.recall_max_tokens = 32
  # SmolLM2-135M rarely writes \boxed{} on its own; prefilling it lets its answers be scored.
  cfg.agent.answer_prefix = "\\boxed{"

  cfg.objectives.end_to_end.num_rollouts = 2  # G1
  cfg.objectives.recall.num_samples = 2  # G2

  cfg.rl.packing.seq_len = 640  # >= 256 + 192 + 64 + 64 - 1
  cfg.rl.packing.micro_batch_size = 1
  cfg.rl.packing.num_micro_batches_multiple = 2
  cfg.rl.packing.logprob_chunk_size = 128

  # A 135M model almost never reconstructs the entity, so nearly every group has equal rewards;
  # with the paper's DAPO filtering on, no row would be trained and the update path would never
  # run on CPU. Off here, so the smoke run exercises the whole step.
  cfg.rl.advantage.drop_degenerate_e2e = False
  cfg.rl.advantage.drop_degenerate_recall = False

  cfg.optim.warmup_steps = 1  # a 3-step smoke run has no room for the paper's 20-step warm-up

  cfg.train.num_steps = 3
  cfg.train.batch_documents = 2
  cfg.train.dump_rollouts_every = 1
  cfg.train.dump_rollouts_count = 1

  cfg.checkpoint.every = 2
  cfg.checkpoint.keep = 2
  return cfg
