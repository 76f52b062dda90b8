"""MemAgent task RL (long-text QA) at the scale of a 2-core CPU: SmolLM2-135M on bundled HotpotQA.

Command (the optional argument is the starting checkpoint: the base model by default, or a MemTrain
run's exported HF directory for the "MemTrain -> MemAgent" row):
  memtrain train --config configs/memagent_cpu.py --workdir runs/memagent_cpu
  memtrain train --config configs/memagent_cpu.py:runs/memtrain_cpu/hf --workdir runs/memtrain_memagent_cpu

Hardware: 2 CPU cores, 8 GB of memory.

What it trains: RULER-HotpotQA documents built from the bundled HotpotQA dev questions 16..49
(questions 0..15 are held out for `configs/eval/cpu_chain.py`), each padded with distractor
paragraphs to ~512 policy tokens and read in 256-token chunks; the reward is MemAgent's: the final
\\boxed{} answer's exact match, nothing else (`qa_final_answer`, recall off). G = 4 rollouts per
question, 2 questions per step, lr 1e-5 (the paper's 1e-6 does not move a 135M model in a few steps).

Expected result: 2 steps of a few minutes each on a quiet machine (4 x 2 trajectories of 2-3
chunks per step). A 135M model answers few HotpotQA
questions; the yes/no comparison questions give it some reward by chance, so some groups carry
signal. This checks the task-RL plumbing at small scale; it does not reproduce the paper's gains.
"""

from memtrain_jax import config_lib
from memtrain_jax.models.loading import BUNDLED_MODEL


def get_config(model_path: str = BUNDLED_MODEL):
  cfg = config_lib.base_config()
  cfg.model.path = model_path
  cfg.task.name = "long_qa"
  cfg.task.long_qa.question_start = 16
  cfg.task.long_qa.target_tokens = (512,)
  # Training needs no exact lengths: each question takes its closest document count (one long
  # paragraph can be a third of 512 tokens).
  cfg.task.long_qa.length_tolerance = 1.0
  cfg.data.chunking.chunk_size = 256

  cfg.objectives.end_to_end.name = "qa_final_answer"
  cfg.objectives.end_to_end.num_rollouts = 4
  cfg.objectives.recall.enabled = False

  cfg.agent.prompt_max_tokens = 128  # instruction + one HotpotQA question
  cfg.agent.memory_max_tokens = 64
  cfg.agent.answer_max_tokens = 24
  cfg.agent.recall_max_tokens = 24
  cfg.agent.answer_prefix = "\\boxed{"  # SmolLM2 rarely writes \boxed{} on its own

  cfg.rl.kl_coef = 0.0  # no reference pass on CPU (the paper configs keep 1e-3)
  cfg.rl.advantage.drop_degenerate_e2e = False  # MemAgent does not filter groups
  cfg.rl.packing.seq_len = 640  # >= 128 + 64 + 256 + 64 + 128 slack for the chat template
  cfg.rl.packing.micro_batch_size = 1
  cfg.rl.packing.num_micro_batches_multiple = 2
  cfg.rl.packing.logprob_chunk_size = 128

  cfg.optim.lr = 1e-5
  cfg.optim.warmup_steps = 1

  cfg.train.num_steps = 2
  cfg.train.batch_documents = 2
  cfg.train.dump_rollouts_every = 1
  cfg.train.dump_rollouts_count = 1
  cfg.checkpoint.every = 2
  cfg.checkpoint.keep = 1
  return cfg
