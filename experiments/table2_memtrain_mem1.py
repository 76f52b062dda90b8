"""Table 2 (multi-hop QA with a search tool), row `table2_memtrain_mem1`: see experiments/paper_rows.py for the chain it runs.

  python -m experiments.table2_memtrain_mem1 --scale cpu                # SmolLM2-135M, bundled data, this CPU
  python -m experiments.table2_memtrain_mem1 --scale paper --backbone qwen3_4b --model-path ~/models/...

Writes experiments/results/table2_memtrain_mem1_<scale>_*.md|json|png (the row's table, figures and plot).
"""

import sys

from experiments.paper_rows import row_main

if __name__ == "__main__":
  sys.exit(row_main("table2_memtrain_mem1"))
