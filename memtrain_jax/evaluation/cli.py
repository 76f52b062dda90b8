"""`memtrain eval`: the paper's Table 1 and Table 2 evaluations of one or more models.

  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval_cpu \
      [--config.models='("base=bundled:smollm2-135m-instruct", "memtrain=runs/cpu/hf")' ...]
  python -m memtrain_jax.evaluation.cli --config ... --workdir ...

The workdir gets results.json, table_long_qa.md, table_search_qa.md,
long_qa_accuracy_vs_length.png, and per-question records under predictions/. Each finished
(model, task, length / data set) cell is saved under cells/ as it completes; re-running the same
command skips the finished cells.
"""

from __future__ import annotations

import argparse
import logging
import sys

from memtrain_jax import config_lib
from memtrain_jax.evaluation import config as eval_config_lib
from memtrain_jax.evaluation import runner

log = logging.getLogger("memtrain")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="memtrain eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="a configs/eval/*.py file (optionally FILE:arg)")
  parser.add_argument("--workdir", required=True, help="output directory: cells, tables, plot")
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith(("--config.", "config."))]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config overrides look like "
                 "--config.long_qa.question_count=4")
  # Libraries (jax, bm25s) log a lot at INFO; show theirs from WARNING and ours from INFO.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  log.setLevel(logging.INFO)
  try:
    cfg = config_lib.load_config(args.config, overrides)
    eval_config_lib.validate_eval_config(cfg)
  except (ValueError, FileNotFoundError, TypeError) as e:
    print(f"memtrain eval: bad config: {e}", file=sys.stderr)
    return 2
  runner.run_eval(cfg, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
