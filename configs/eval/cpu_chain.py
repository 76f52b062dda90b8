"""CPU-scale evaluation of the MemTrain chain on SmolLM2-135M: long-text QA and search QA.

Command (the base model on both tables):
  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval_cpu
The chain's exported checkpoints, one table at a time (or experiments/table1_*.py and
table2_*.py, which train the chain and run these evaluations):
  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval_cpu_table1 \
      --config.search_qa.enabled=false --config.models='("base=bundled:smollm2-135m-instruct",
      "memtrain=runs/memtrain_cpu/hf", "memagent=runs/memagent_cpu/hf",
      "memtrain_memagent=runs/memtrain_memagent_cpu/hf")'
  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval_cpu_table2 \
      --config.long_qa.enabled=false --config.models='("base=bundled:smollm2-135m-instruct",
      "mem1=runs/mem1_cpu/hf", "memtrain_mem1=runs/memtrain_mem1_cpu/hf")'
(the models tuple on one line in the shell). Finished cells in a workdir are skipped, so a model
added later runs only its own cells; long_qa.models / search_qa.models restrict a table to some
of the models instead.

The base model is also read in one window on Table 1 (the full-context baseline).

Data: RULER-HotpotQA built from the bundled HotpotQA dev questions 0..15, held out from task RL
(configs/memagent_cpu.py and configs/mem1_cpu.py train on questions 16..49; 'selected' distractors
come from these 16 questions' own paragraphs only), at 512 / 1K / 2K tokens of context read in
256-token chunks; search QA on the same 16 questions as 8 two-question tasks with BM25 over the
bundled paragraphs. Budgets match the CPU training configs (memory 64 tokens, answer 24 after a
prefilled "\\boxed{"; search: 3 turns, replies of 96 tokens, passages of 192). Greedy decoding.

Hardware: 2 CPU cores, 8 GB of memory, no accelerator.

Expected result, measured for the base model alone (7 cells: memory agent and full context at
512 / 1K / 2K, search QA), on 2 CPU cores shared with other jobs (load average 8-11, so this
process got ~40% of one core): 59 min of cell time (memory agent 6:21 / 9:17 / 14:07, full context
2:59 / 5:49 / 17:22, search 2:42); the last 4 cells took 29 min of wall time and 14 min of CPU
time (user + sys). Each extra SmolLM2-sized model costs about the same again, minus the compiles it
shares with the first (samplers are shared). Every score is
0.00: SmolLM2-135M almost never closes the prefilled \\boxed{ (1 of 96 long-QA answers did) and
answered none of the 8 search tasks (0.12 searches, 3 turns per episode), so this run checks the
harness and the chain's plumbing end to end, not the paper's gains; the report's "closed
\\boxed{}" table shows why the scores are 0.
"""

from memtrain_jax.evaluation.config import eval_config


def get_config():
  cfg = eval_config()
  cfg.models = ("base=bundled:smollm2-135m-instruct",)

  cfg.sampling.temperature = 0.0  # greedy: one deterministic answer per question
  # 1536 and 3072 fit the full-context prompts of the 1K and 2K contexts (~1.2K, ~2.3K tokens).
  cfg.sampling.prompt_buckets = (256, 512, 1024, 1536, 2048, 3072, 4096)

  cfg.agent.prompt_max_tokens = 448  # the search instructions (~330 tokens) + two questions
  cfg.agent.chunk_size = 256
  cfg.agent.memory_max_tokens = 64
  cfg.agent.answer_max_tokens = 24
  # SmolLM2-135M rarely writes \boxed{} on its own; prefilling it lets its answers be scored.
  cfg.agent.answer_prefix = "\\boxed{"

  cfg.long_qa.question_start = 0
  cfg.long_qa.question_count = 16
  cfg.long_qa.lengths = (512, 1024, 2048)
  cfg.long_qa.length_tolerance = 0.3  # a paragraph is a fifth of 512 tokens
  cfg.long_qa.full_context_models = ("base",)
  cfg.long_qa.full_context_max_tokens = 4096  # within SmolLM2's 8K window; no context needs it
  # 16 prompts of 2K tokens in one prefill took 10.6 GB and were OOM-killed; 2 stay under 3 GB.
  cfg.long_qa.full_context_batch_size = 2

  cfg.search_qa.datasets = ("hotpotqa=bundled:hotpotqa-dev-50",)
  cfg.search_qa.question_start = 0
  cfg.search_qa.question_count = 16
  cfg.search_qa.max_turns = 3
  cfg.search_qa.max_response_tokens = 96
  cfg.search_qa.max_obs_tokens = 192

  cfg.report.title = "MemTrain CPU chain (SmolLM2-135M)"
  cfg.report.row_names = (
      "base:full_context=SmolLM2-135M-Instruct", "base:memory_agent=SmolLM2-135M (memory agent)",
      "base:search=SmolLM2-135M-Instruct", "memtrain=+MemTrain", "memagent=+MemAgent",
      "memtrain_memagent=+MemTrain+MemAgent", "mem1=+MEM1", "memtrain_mem1=+MemTrain+MEM1")
  return cfg
