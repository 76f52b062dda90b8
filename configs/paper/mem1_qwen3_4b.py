"""MEM1 task RL (multi-hop QA with a search tool) on Qwen3-4B-Instruct-2507 (paper §4.3).

The argument is the starting checkpoint: the base model (Table 2 row "+MEM1") or the MemTrain run's
exported HF directory (row "+MemTrain+MEM1").

Command (start a retriever first: MEM1's e5 + FAISS wiki-18 server, or the built-in BM25 one,
`memtrain serve-retrieval --corpus wiki-18.jsonl --port 8000`):
  memtrain train --config configs/paper/mem1_qwen3_4b.py:~/models/Qwen3-4B-Instruct-2507 \
    --workdir gs://bucket/mem1_4b --config.task.search_qa.source=~/data/nq_hotpotqa_train.jsonl

Hardware: as configs/paper/memtrain_qwen3_4b.py (8x H100 80GB or TPU v5p-16).

Settings: the paper's 200 steps, rollout batch 32, update batch 8, lr 5e-7, at most 6 turns, 1k-token
responses and retrieved text, 2 questions per prompt (HotpotQA + NQ), top-3 passages. MEM1's
public script uses PPO with GAE; whether MemTrain's MEM1 stage used PPO or GRPO and its group size
are NOT FOUND, so this runs the project's GRPO with G = 5 (Search-R1's n_agent) and KL 1e-3.

Expected result (paper Table 2, 2-objective EM averaged over 7 data sets): 21.50 from the base
model, 32.08 from the MemTrain checkpoint (Qwen2.5-7B: 23.94 and 32.44).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memtrain_qwen3_4b.py")


def get_config(model_path: str = "~/models/Qwen3-4B-Instruct-2507"):
  cfg = config_lib.config_from_file(BASE)
  cfg.model.path = model_path
  cfg.task.name = "search_qa"
  cfg.task.search_qa.source = "~/data/nq_hotpotqa_train.jsonl"  # Search-R1/MEM1 rows; override
  cfg.task.search_qa.question_start = 0
  cfg.task.search_qa.questions_per_task = 2
  cfg.task.search_qa.max_turns = 6
  cfg.task.search_qa.max_response_tokens = 1000
  cfg.task.search_qa.max_obs_tokens = 1000
  cfg.task.search_qa.topk = 3
  cfg.task.search_qa.retrieval_url = "http://127.0.0.1:8000"

  cfg.objectives.end_to_end.name = "qa_final_answer"  # not read by search rollouts
  cfg.objectives.end_to_end.num_rollouts = 5  # NOT FOUND; Search-R1's n_agent
  cfg.objectives.recall.enabled = False
  cfg.agent.prompt_max_tokens = 1024
  cfg.agent.answer_prefix = ""

  cfg.rl.advantage.drop_degenerate_e2e = False
  cfg.rl.num_mini_batches = 4  # update batch 8 of 32 tasks
  cfg.rl.packing.seq_len = 4224  # >= 1024 + 1000 + 1000 + 96 + 1000
  cfg.optim.lr = 5e-7

  cfg.train.num_steps = 200
  cfg.train.batch_documents = 32
  return cfg
