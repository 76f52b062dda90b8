"""Ablation "Decoupled" (paper §5.1, Figure 3): recall is trained, but lambda = 0.

The end-to-end reward is then only the final answer's correctness; memory-writing steps get no
credit for memories that answer recall probes.

Command:
  memtrain train --config configs/paper/ablation_decoupled.py --workdir gs://bucket/abl_decoupled \
    --config.model.path=~/models/Qwen3-4B-Instruct-2507

Hardware: as configs/paper/memtrain_qwen3_4b.py (8x H100 80GB or TPU v5p-16).

Expected result: after MemAgent post-training, better than End-to-End up to 56k tokens but much
worse at longer contexts, and below the full method (70.31) at every length; the per-length values
and the average are only in the paper's figure (NOT FOUND as numbers).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memtrain_qwen3_4b.py")


def get_config():
  cfg = config_lib.config_from_file(BASE)
  cfg.objectives.recall.lam = 0.0
  return cfg
