"""MemAgent task RL (long-text QA) on Qwen3-4B-Instruct-2507, as the paper runs it (§4.2).

The argument is the starting checkpoint: the base model (Table 1 row "+MemAgent") or the MemTrain
run's exported HF directory (row "+MemTrain+MemAgent").

Command (HotpotQA train file, or MemAgent's built `hotpotqa_train_32k.parquet`, downloaded once):
  memtrain train --config configs/paper/memagent_qwen3_4b.py:~/models/Qwen3-4B-Instruct-2507 \
    --workdir gs://bucket/memagent_4b --config.task.long_qa.source=~/data/hotpot_train_v1.1.json
  memtrain train --config configs/paper/memagent_qwen3_4b.py:gs://bucket/memtrain_4b/hf \
    --workdir gs://bucket/memtrain_memagent_4b --config.task.long_qa.source=...

Hardware: as configs/paper/memtrain_qwen3_4b.py (8x H100 80GB or TPU v5p-16). Wall-clock: NOT
FOUND in the paper.

Settings: the paper changes MemAgent's recipe to 500 steps, rollout batch 32, update batch 8 and
lr 1e-6; everything else is MemAgent's [inherited]: group size 16, chunk 5000 tokens, memory 1024,
final answer 1024, KL 1e-3 (low_var_kl), clip 0.2 / 0.2, no std division, no group filtering, and
training contexts of ~28K tokens (200 HotpotQA documents).

Expected result (paper Table 1, RULER-HotpotQA average over 7K..896K): 65.14 from the base model,
70.31 from the MemTrain checkpoint (Qwen2.5-7B: 55.86 and 73.53).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memtrain_qwen3_4b.py")


def get_config(model_path: str = "~/models/Qwen3-4B-Instruct-2507"):
  cfg = config_lib.config_from_file(BASE)  # model, mesh, dtypes and budgets of the MemTrain run
  cfg.model.path = model_path
  cfg.task.name = "long_qa"
  cfg.task.long_qa.source = "~/data/hotpot_train_v1.1.json"  # override with the real file
  cfg.task.long_qa.question_start = 0
  cfg.task.long_qa.target_tokens = (28000,)
  cfg.data.chunking.chunk_size = 5000  # [inherited] MemAgent

  cfg.objectives.end_to_end.name = "qa_final_answer"
  cfg.objectives.end_to_end.num_rollouts = 16  # [inherited] MemAgent's group size
  cfg.objectives.recall.enabled = False
  cfg.agent.answer_prefix = ""

  cfg.rl.clip_eps_high = 0.2  # [inherited] MemAgent's script
  cfg.rl.advantage.drop_degenerate_e2e = False  # [inherited] filter_groups off in MemAgent
  cfg.rl.num_mini_batches = 4  # update batch 8 of 32 questions
  cfg.optim.lr = 1e-6

  cfg.train.num_steps = 500
  cfg.train.batch_documents = 32
  return cfg
