"""MemTrain on Qwen2.5-7B-Instruct with the paper's hyper-parameters (§4.1).

Command:
  memtrain train --config configs/paper/memtrain_qwen2_5_7b.py --workdir gs://bucket/memtrain_7b \
    --config.model.path=~/models/Qwen2.5-7B-Instruct

Hardware: 8x H100 80GB or a TPU v5p-16 slice (8 chips), FSDP over all devices (f32 weights and
AdamW moments of 7.6B parameters take ~91 GB, ~11 GB per device). Qwen2.5-7B has 28 query / 4 KV
heads, so tensor parallelism is limited to 2 or 4 ways. Wall-clock: NOT FOUND in the paper.

Expected result: RULER-HotpotQA average 45.41 for the MemTrain checkpoint (base model 20.80), and
73.53 after MemAgent post-training (MemAgent alone 55.86, +17.67) (paper Table 1).
"""

import os

from memtrain_jax import config_lib

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memtrain_qwen3_4b.py")


def get_config():
  cfg = config_lib.config_from_file(BASE)
  cfg.model.path = "~/models/Qwen2.5-7B-Instruct"  # a local HF directory; override it
  return cfg
