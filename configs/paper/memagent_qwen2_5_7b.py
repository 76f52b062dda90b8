"""MemAgent task RL (long-text QA) on Qwen2.5-7B-Instruct, as the paper runs it (§4.2).

Command: as configs/paper/memagent_qwen3_4b.py, with this file and a Qwen2.5-7B checkpoint:
  memtrain train --config configs/paper/memagent_qwen2_5_7b.py:~/models/Qwen2.5-7B-Instruct \
    --workdir gs://bucket/memagent_7b --config.task.long_qa.source=~/data/hotpot_train_v1.1.json

Hardware: 8x H100 80GB or TPU v5p-16, FSDP over all devices.

Expected result (paper Table 1, average over 7K..896K): 55.86 from the base model, 73.53 from the
MemTrain checkpoint (+17.67).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memagent_qwen3_4b.py")


def get_config(model_path: str = "~/models/Qwen2.5-7B-Instruct"):
  return config_lib.config_from_file(BASE, model_path)
