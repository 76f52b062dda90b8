"""MEM1 task RL (search QA) on Qwen2.5-7B-Instruct (paper §4.3).

Command: as configs/paper/mem1_qwen3_4b.py, with this file:
  memtrain train --config configs/paper/mem1_qwen2_5_7b.py:~/models/Qwen2.5-7B-Instruct \
    --workdir gs://bucket/mem1_7b --config.task.search_qa.source=~/data/nq_hotpotqa_train.jsonl

Hardware: 8x H100 80GB or TPU v5p-16, FSDP over all devices.

Expected result (paper Table 2, average EM over 7 data sets): 23.94 from the base model, 32.44 from
the MemTrain checkpoint (+8.50).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mem1_qwen3_4b.py")


def get_config(model_path: str = "~/models/Qwen2.5-7B-Instruct"):
  return config_lib.config_from_file(BASE, model_path)
