"""Paper Table 2: multi-hop QA with a search tool (MEM1's 2-objective protocol, 7 data sets).

Command (the argument picks the backbone: qwen3_4b, the default, or qwen2_5_7b; the paths below
are placeholders, give the real ones with --config.models and --config.search_qa.datasets):
  memtrain serve-retrieval ... --port 8000   (or MEM1's / Search-R1's e5 + FAISS wiki-18 server)
  memtrain eval --config configs/eval/paper_table2.py:qwen3_4b --workdir runs/eval_table2_qwen3_4b \
      --config.models='("base=/models/Qwen3-4B-Instruct-2507", "mem1=runs/mem1_qwen3_4b/hf",
        "memtrain_mem1=runs/memtrain_mem1_qwen3_4b/hf")' \
      --config.search_qa.datasets='("triviaqa=/data/mem1/test/triviaqa.jsonl", ...)'

Data: the MEM1 / Search-R1 test files of TriviaQA, Bamboogle, HotpotQA, NQ, PopQA, 2WikiMultiHopQA
and MuSiQue (FlashRAG splits: test for NQ, TriviaQA, PopQA, Bamboogle; dev for the others), one
{question, golden_answers} row per question; consecutive pairs become the 2-objective tasks (MEM1).
Every row is used (question_count 0); the paper does not say how many it used.

Protocol (paper §4.3, MEM1): at most 6 turns, replies and retrieved passages capped at 1000 tokens
each, top-3 passages from the retriever at retrieval_url (MEM1: e5-base-v2 + FAISS over wiki-18);
EM averaged over a task's two questions, then over tasks; Avg is the unweighted mean of the 7.
Greedy decoding (the paper's eval sampling is not stated; MemSearcher evaluates greedily).
MemTrain-only models are not evaluated here, as in the paper.

Hardware: one 80 GB GPU (H100) per model in bf16, plus the retrieval server. Not yet run at this
scale.

Expected result (paper Table 2, EM %, TriviaQA Bamboogle HotpotQA NQ PopQA 2Wiki MuSiQue Avg):
  Qwen3-4B-Instruct-2507  42.71 21.78 18.94 19.92 21.81 14.36  4.76 | 20.61
  +MEM1                   44.29 23.39 18.80 21.97 23.62 12.80  5.63 | 21.50
  +MemTrain+MEM1          55.63 34.68 27.85 32.24 37.91 25.84 10.43 | 32.08
  Qwen2.5-7B-Instruct     18.84  8.87 11.15 12.22 12.59 10.45  4.43 | 11.22
  +MEM1                   49.08 22.58 19.79 24.21 27.13 17.81  6.96 | 23.94
  +MemTrain+MEM1          57.21 30.65 27.73 35.18 38.36 27.32 10.64 | 32.44
"""

from memtrain_jax.evaluation.config import eval_config

_BACKBONES = {
    "qwen3_4b": "Qwen3-4B-Instruct-2507",
    "qwen2_5_7b": "Qwen2.5-7B-Instruct",
}
# The paper's column order.
_DATASETS = ("triviaqa", "bamboogle", "hotpotqa", "nq", "popqa", "2wiki", "musique")


def get_config(backbone: str = "qwen3_4b"):
  if backbone not in _BACKBONES:
    raise ValueError(f"unknown backbone {backbone!r}; use one of {sorted(_BACKBONES)}")
  hf_name = _BACKBONES[backbone]
  cfg = eval_config()
  # Placeholders: override with the real paths.
  cfg.models = (f"base=/path/to/{hf_name}",
                f"mem1=/path/to/runs/mem1_{backbone}/hf",
                f"memtrain_mem1=/path/to/runs/memtrain_mem1_{backbone}/hf")
  cfg.model.param_dtype = "bfloat16"
  cfg.model.compute_dtype = "bfloat16"

  cfg.sampling.temperature = 0.0
  cfg.sampling.batch_buckets = (1, 2, 4, 8, 16, 32, 64)

  cfg.agent.prompt_max_tokens = 1024  # instruction + two questions

  cfg.long_qa.enabled = False  # Table 1: configs/eval/paper_table1.py

  cfg.search_qa.datasets = tuple(f"{name}=/path/to/mem1/test/{name}.jsonl" for name in _DATASETS)
  cfg.search_qa.question_start = 0
  cfg.search_qa.question_count = 0
  cfg.search_qa.questions_per_task = 2
  cfg.search_qa.max_turns = 6
  cfg.search_qa.max_response_tokens = 1000
  cfg.search_qa.max_obs_tokens = 1000
  cfg.search_qa.topk = 3
  cfg.search_qa.retrieval_url = "http://127.0.0.1:8000"

  cfg.report.title = f"Table 2 ({hf_name})"
  cfg.report.row_names = (f"base={hf_name}", "mem1=+MEM1", "memtrain_mem1=+MemTrain+MEM1")
  return cfg
