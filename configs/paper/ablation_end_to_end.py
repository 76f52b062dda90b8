"""Ablation "End-to-End" (paper §5.1, Figure 3): the recall (IMR) objective is switched off.

Command:
  memtrain train --config configs/paper/ablation_end_to_end.py --workdir gs://bucket/abl_e2e \
    --config.model.path=~/models/Qwen3-4B-Instruct-2507

Hardware: as configs/paper/memtrain_qwen3_4b.py (8x H100 80GB or TPU v5p-16); cheaper, since no
recall samples are generated or trained.

Expected result: after MemAgent post-training, RULER-HotpotQA average 63.28 against 70.31 for the
full method, below MemAgent alone (65.14): without recall, memory pre-training does not help.
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memtrain_qwen3_4b.py")


def get_config():
  cfg = config_lib.config_from_file(BASE)
  cfg.objectives.recall.enabled = False
  return cfg
