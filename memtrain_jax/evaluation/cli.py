"""`memtrain eval`: the paper's Table 1 and Table 2 evaluations of one or more models.

  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval_cpu \
      [--config.models='("base=bundled:smollm2-135m-instruct", "memtrain=runs/cpu/hf")' ...]
  python -m memtrain_jax.evaluation.cli --config ... --workdir ...

The workdir gets results.json, table_long_qa.md, table_search_qa.md,
long_qa_accuracy_vs_length.png, and per-question records under predictions/. Each finished
(model, task, length / data set) cell is saved under cells/ as it completes; re-running the same
command skips the finished cells.

The workdir may be a `gs://` (or other etils.epath) URL. On a multi-process job (a TPU pod slice:
the same command on every host, or MEMTRAIN_COORDINATOR / MEMTRAIN_NUM_PROCESSES /
MEMTRAIN_PROCESS_ID set on each process) every process runs every cell over the global mesh and
process 0 alone writes the workdir.
"""

from __future__ import annotations

import sys

from memtrain_jax import config_lib
from memtrain_jax.evaluation import config as eval_config_lib
from memtrain_jax.evaluation import runner


def main(argv: list[str] | None = None) -> int:
  parsed = config_lib.parse_command_line(
      "memtrain eval", __doc__, argv, eval_config_lib.validate_eval_config,
      config_help="a configs/eval/*.py file (optionally FILE:arg)",
      workdir_help="output directory: cells, tables, plot",
      example_override="--config.long_qa.question_count=4")
  if parsed is None:
    return 2
  cfg, workdir = parsed
  runner.run_eval(cfg, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
