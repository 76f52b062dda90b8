"""The default config shrunk for a tiny random model: the train-loop tests' config.

  memtrain train --config tests/train/tiny_loop_config.py:MODEL_DIR --workdir DIR
"""

import os

from memtrain_jax import config_lib

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "default.py")


def get_config(model_dir: str):
  cfg = config_lib.config_from_file(DEFAULT)
  cfg.model.path = model_dir
  cfg.data.num_documents = 4
  cfg.data.retrieval.num_related = 2
  cfg.data.assembly.num_passages = 6
  cfg.data.assembly.min_tokens = 150
  cfg.data.assembly.max_tokens = 280
  cfg.data.chunking.chunk_size = 96
  cfg.data.chunking.max_chunks = 3
  cfg.data.entities.backend = "rules"  # the same entities with or without spaCy installed
  cfg.agent.memory_max_tokens = 8
  cfg.agent.answer_max_tokens = 6
  cfg.agent.recall_max_tokens = 6
  cfg.rl.packing.seq_len = 384
  cfg.rl.kl_coef = 1e-3  # the paper's KL term, with its reference log-prob pass
  cfg.train.batch_documents = 2
  cfg.optim.lr = 1e-3  # large enough that a tiny model's weights visibly move
  cfg.train.num_steps = 3
  cfg.checkpoint.every = 1
  cfg.checkpoint.keep = 5
  return cfg
