"""Table 1 (RULER-HotpotQA, long-text QA), row `table1_base`: see experiments/paper_rows.py for the chain it runs.

  python -m experiments.table1_base --scale cpu                # SmolLM2-135M, bundled data, this CPU
  python -m experiments.table1_base --scale paper --backbone qwen3_4b --model-path ~/models/...

Writes experiments/results/table1_base_<scale>_*.md|json|png (the row's table, figures and plot).
"""

import sys

from experiments.paper_rows import row_main

if __name__ == "__main__":
  sys.exit(row_main("table1_base"))
