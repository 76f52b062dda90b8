"""the ablation figure (Figure 3, long-text QA), row `ablation_full`: see experiments/paper_rows.py for the chain it runs.

  python -m experiments.ablation_full --scale cpu                # SmolLM2-135M, bundled data, this CPU
  python -m experiments.ablation_full --scale paper --backbone qwen3_4b --model-path ~/models/...

Writes experiments/results/ablation_full_<scale>_*.md|json|png (the row's table, figures and plot).
"""

import sys

from experiments.paper_rows import row_main

if __name__ == "__main__":
  sys.exit(row_main("ablation_full"))
