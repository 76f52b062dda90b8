"""Training curves from a run's metrics.jsonl, as a PNG (what TensorBoard shows, for the README).

  .venv/bin/python -m experiments.plot_training --workdir /tmp/memtrain_default \
      --out experiments/results/default_run_curves.png
"""

from __future__ import annotations

import argparse
import json
import os

PANELS = (
    ("rewards", ("rewards/e2e_reward_mean", "accuracy/e2e_final", "accuracy/recall")),
    ("loss", ("train/loss",)),
    ("KL to reference / approx KL", ("train/ref_kl_mean", "train/approx_kl_mean")),
    ("gradient norm", ("train/grad_norm",)),
    ("memory length (tokens)", ("memory/length_tokens",)),
    ("step time split (s)", ("time/rollout", "time/logprobs", "time/update")),
)


def load(workdir: str) -> list[dict]:
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      by_step[record["step"]] = record  # a resumed run's repeat of a step replaces the first
  return [by_step[s] for s in sorted(by_step)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--title", default="")
  args = parser.parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = load(args.workdir)
  steps = [r["step"] for r in records]
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for ax, (title, keys) in zip(axes.flat, PANELS):
    for key in keys:
      values = [r.get(key) for r in records]
      if any(v is not None for v in values):
        ax.plot(steps, [float("nan") if v is None else v for v in values], marker="o", label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(args.title or f"memtrain train: {os.path.basename(os.path.abspath(args.workdir))}")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=90)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
