"""Paper Table 1: long-text QA (MemAgent's RULER-HotpotQA, 7K..896K tokens) for one backbone.

Command (the argument picks the backbone: qwen3_4b, the default, or qwen2_5_7b; the paths below
are placeholders, give the real ones with --config.models and --config.long_qa.source):
  memtrain eval --config configs/eval/paper_table1.py:qwen3_4b --workdir runs/eval_table1_qwen3_4b \
      --config.models='("base=/models/Qwen3-4B-Instruct-2507", "memtrain=runs/memtrain_qwen3_4b/hf",
        "memagent=runs/memagent_qwen3_4b/hf", "memtrain_memagent=runs/memtrain_memagent_qwen3_4b/hf")' \
      --config.long_qa.source=/data/memagent/hotpotqa/eval_{num_docs}.json

Data: MemAgent's ready-made RULER-HotpotQA eval files, one per document count N = 50 .. 6400
(~7K .. 896K tokens; 128 questions each, the first dev questions that neither Qwen2.5-7B nor its
instruct model answers closed-book, built by MemAgent's `different_docs_eval.py`), given as a path
with a '{num_docs}' slot. Without them, long_qa.source can be HotpotQA's
hotpot_dev_distractor_v1.json with long_qa.distractor_pool='source' (MemAgent's pool, every dev
paragraph) and question_count=128, but the questions are then the first 128, not MemAgent's
filtered 128.

Protocol (paper §4.2, MemAgent's eval): the memory agent reads 5000-token chunks with a 1024-token
memory and a 1024-token answer; the base model is also run with the whole document in one window,
centre-truncated to 120000 tokens (MemAgent's MAX_INPUT_LEN; how the paper truncates is not
stated); sampling temperature 0.7, top-p 0.95, one sample per question; sub-EM against the first
gold answer. Table 1's base rows are the full-context rows.

Hardware: one 80 GB GPU (H100) per model in bf16; the full-context baseline runs one question at a
time (a 120K-token cache row of Qwen3-4B is ~18 GB, of Qwen2.5-7B ~7 GB). Not yet run at this
scale.

Expected result (paper Table 1, sub-EM %, 7K 14K 28K 56K 112K 224K 448K 896K Avg):
  Qwen3-4B-Instruct     57.81 51.56 34.38 10.94  8.59  4.69  3.91  3.91 | 21.97
  +MemTrain             63.28 60.16 60.16 57.03 60.94 58.59 48.44 40.62 | 56.15
  +MemAgent             70.31 64.06 71.88 62.50 64.84 66.41 64.06 57.03 | 65.14
  +MemTrain+MemAgent    79.69 73.44 75.78 73.44 68.75 67.19 61.72 62.50 | 70.31
  Qwen2.5-7B-Instruct   53.12 51.56 35.16 13.28 10.16  1.56  1.56  0.00 | 20.80
  +MemTrain             59.38 55.47 48.44 46.09 42.19 38.28 39.84 33.59 | 45.41
  +MemAgent             64.06 67.19 62.50 59.38 55.47 50.00 46.88 41.41 | 55.86
  +MemTrain+MemAgent    76.56 79.69 77.34 75.00 70.31 75.78 64.84 68.75 | 73.53
"""

from memtrain_jax.evaluation.config import eval_config
from memtrain_jax.tasks import ruler_hotpotqa

_BACKBONES = {
    "qwen3_4b": ("Qwen3-4B-Instruct-2507", "Qwen3-4B-Instruct"),
    "qwen2_5_7b": ("Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct"),
}


def get_config(backbone: str = "qwen3_4b"):
  if backbone not in _BACKBONES:
    raise ValueError(f"unknown backbone {backbone!r}; use one of {sorted(_BACKBONES)}")
  hf_name, row = _BACKBONES[backbone]
  cfg = eval_config()
  # Placeholders: override with the real paths.
  cfg.models = (f"base=/path/to/{hf_name}",
                f"memtrain=/path/to/runs/memtrain_{backbone}/hf",
                f"memagent=/path/to/runs/memagent_{backbone}/hf",
                f"memtrain_memagent=/path/to/runs/memtrain_memagent_{backbone}/hf")
  cfg.model.param_dtype = "bfloat16"
  cfg.model.compute_dtype = "bfloat16"

  cfg.sampling.temperature = 0.7  # MemAgent's eval
  cfg.sampling.top_p = 0.95
  cfg.sampling.batch_buckets = (1, 2, 4, 8, 16, 32)  # 32 rows x 9K-token caches fit 80 GB

  cfg.agent.prompt_max_tokens = 1024
  cfg.agent.chunk_size = 5000
  cfg.agent.memory_max_tokens = 1024
  cfg.agent.answer_max_tokens = 1024
  cfg.agent.answer_prefix = ""  # the paper prefills nothing

  cfg.long_qa.source = "/path/to/memagent/hotpotqa/eval_{num_docs}.json"
  cfg.long_qa.question_start = 0
  cfg.long_qa.question_count = 0  # every question of the files (128)
  cfg.long_qa.lengths = ()
  cfg.long_qa.num_docs = ruler_hotpotqa.MEMAGENT_NUM_DOCS
  cfg.long_qa.length_labels = ("7K", "14K", "28K", "56K", "112K", "224K", "448K", "896K")
  cfg.long_qa.full_context_models = ("base",)
  cfg.long_qa.full_context_max_tokens = 120000
  cfg.long_qa.full_context_batch_size = 1

  cfg.search_qa.enabled = False  # Table 2: configs/eval/paper_table2.py

  cfg.report.title = f"Table 1 ({hf_name})"
  cfg.report.row_names = (f"base:full_context={row}", f"base:memory_agent={row} (memory agent)",
                          "memtrain=+MemTrain", "memagent=+MemAgent",
                          "memtrain_memagent=+MemTrain+MemAgent")
  return cfg
