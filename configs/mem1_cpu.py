"""MEM1 task RL (search-based QA) at the scale of a 2-core CPU: SmolLM2-135M with in-process BM25.

Command (the optional argument is the starting checkpoint, as in configs/memagent_cpu.py):
  memtrain train --config configs/mem1_cpu.py --workdir runs/mem1_cpu
  memtrain train --config configs/mem1_cpu.py:runs/memtrain_cpu/hf --workdir runs/memtrain_mem1_cpu

Hardware: 2 CPU cores, 8 GB of memory. No server is needed: the retriever is BM25 over the
paragraphs of the bundled HotpotQA questions (set task.search_qa.retrieval_url to use a running
`memtrain serve-retrieval` or a Search-R1 e5 server instead).

What it trains: tasks of 2 bundled HotpotQA dev questions (16..49; 0..15 are held out), G = 4
episodes per task, at most 3 turns of <think>/<search>/<answer> replies capped at 96 tokens with
passages capped at 192 tokens; each turn is one training row sharing its episode's reward (EM
averaged over the two questions).

Expected result: a few steps of a few minutes each. SmolLM2-135M rarely produces a well-formed
action, so rewards are mostly 0; the run checks the search-RL plumbing, not the paper's gains.
"""

import os

from memtrain_jax import config_lib
from memtrain_jax.models.loading import BUNDLED_MODEL

# The CPU trainer settings (lr, packing, KL off, no group filtering, steps) are MemAgent's CPU run's.
MEMAGENT_CPU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memagent_cpu.py")


def get_config(model_path: str = BUNDLED_MODEL):
  cfg = config_lib.config_from_file(MEMAGENT_CPU, model_path)
  cfg.task.name = "search_qa"
  cfg.task.search_qa.question_start = 16
  cfg.task.search_qa.max_turns = 3
  cfg.task.search_qa.max_response_tokens = 96
  cfg.task.search_qa.max_obs_tokens = 192

  cfg.agent.prompt_max_tokens = 448  # the search instructions (~330 tokens) + two questions
  cfg.rl.packing.seq_len = 1024  # >= 448 + 96 + 192 + 96 slack + 96 reply
  cfg.train.num_steps = 3
  return cfg
