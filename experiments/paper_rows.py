"""The paper's table rows as chains of `memtrain train` and `memtrain eval` stages.

Every row of Table 1 (RULER-HotpotQA), Table 2 (search QA) and the ablation figure is a chain:
  base model -> [MemTrain (or an ablation of it)] -> [task RL: MemAgent or MEM1] -> evaluation.
A stage is a `memtrain train` run in `<root>/<stage>/`; rows that share a stage share its run
(e.g. "+MemTrain" and "+MemTrain+MemAgent" use one MemTrain checkpoint), and a finished stage (its
exported `hf/` exists) is never run again, so an interrupted chain resumes where it stopped.
Evaluation runs `memtrain eval` for the row's models into `<root>/eval_<table>/`; its cells are
themselves resumable.

Two scales:
- cpu: SmolLM2-135M on the bundled data (configs/default.py, configs/memagent_cpu.py,
  configs/mem1_cpu.py, configs/eval/cpu_chain.py): runs on this 2-core machine.
- paper: Qwen3-4B-Instruct-2507 or Qwen2.5-7B-Instruct with the paper's settings
  (configs/paper/*.py, configs/eval/paper_table{1,2}.py): needs 8x H100 or a TPU v5p-16, the
  model downloaded (--model-path) and the data files passed as --train-override/--eval-override.

Each `experiments/table*_*.py` / `experiments/ablation_*.py` script is one row:
  python -m experiments.table1_memtrain_memagent --scale cpu --root runs/chain_cpu
and `python -m experiments.paper_rows --table table1 --scale cpu` runs every row of a table and
evaluates them together (one table, one plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run: a config plus overrides, started from its parent's export (model.path)."""
  name: str
  config: str  # relative to the repository
  parent: str | None  # the stage whose export it starts from; None = the base model
  overrides: tuple[str, ...] = ()


def _cpu_stages() -> dict[str, Stage]:
  # MemTrain at CPU scale: configs/default.py with G1 = G2 = 4, 2 steps and lr 1e-5 (a 135M model
  # does not move at the paper's 1e-6 in a few steps). Rollouts at temperature 0.7: at the paper's
  # 1.0 SmolLM2-135M's memories and answers were word salad, every reward of a 2-step run was 0 and
  # so was the gradient (runs/chain_cpu, session 2); the PPO ratio still uses the temperature-1
  # policy log-probs.
  memtrain = ("--config.train.num_steps=2", "--config.objectives.end_to_end.num_rollouts=4",
              "--config.objectives.recall.num_samples=4", "--config.optim.lr=1e-5",
              "--config.checkpoint.every=2", "--config.sampling.temperature=0.7")
  # MemAgent at CPU scale: configs/memagent_cpu.py with 4 questions per step (2 steps see 8 of the
  # 34 training questions, so most runs meet one of the 5 yes/no questions, the only ones a 135M
  # model answers by chance) and the same temperature; with 2 questions a step at temperature 1
  # both steps of a run had zero reward and zero gradient (session 3).
  memagent = ("--config.train.batch_documents=4", "--config.sampling.temperature=0.7")
  return {
      "memtrain": Stage("memtrain", "configs/default.py", None, memtrain),
      "memtrain_end_to_end": Stage("memtrain_end_to_end", "configs/default.py", None,
                                   memtrain + ("--config.objectives.recall.enabled=false",)),
      "memtrain_decoupled": Stage("memtrain_decoupled", "configs/default.py", None,
                                  memtrain + ("--config.objectives.recall.lam=0.0",)),
      "memagent": Stage("memagent", "configs/memagent_cpu.py", None, memagent),
      "memtrain_memagent": Stage("memtrain_memagent", "configs/memagent_cpu.py", "memtrain", memagent),
      "end_to_end_memagent": Stage("end_to_end_memagent", "configs/memagent_cpu.py",
                                   "memtrain_end_to_end", memagent),
      "decoupled_memagent": Stage("decoupled_memagent", "configs/memagent_cpu.py",
                                  "memtrain_decoupled", memagent),
      "mem1": Stage("mem1", "configs/mem1_cpu.py", None),
      "memtrain_mem1": Stage("memtrain_mem1", "configs/mem1_cpu.py", "memtrain"),
  }


def _paper_stages(backbone: str) -> dict[str, Stage]:
  memtrain_cfg = f"configs/paper/memtrain_{backbone}.py"
  return {
      "memtrain": Stage("memtrain", memtrain_cfg, None),
      # The ablations are defined on Qwen3-4B (the paper's Figure 3).
      "memtrain_end_to_end": Stage("memtrain_end_to_end", "configs/paper/ablation_end_to_end.py",
                                   None),
      "memtrain_decoupled": Stage("memtrain_decoupled", "configs/paper/ablation_decoupled.py", None),
      "memagent": Stage("memagent", f"configs/paper/memagent_{backbone}.py", None),
      "memtrain_memagent": Stage("memtrain_memagent", f"configs/paper/memagent_{backbone}.py",
                                 "memtrain"),
      "end_to_end_memagent": Stage("end_to_end_memagent", f"configs/paper/memagent_{backbone}.py",
                                   "memtrain_end_to_end"),
      "decoupled_memagent": Stage("decoupled_memagent", f"configs/paper/memagent_{backbone}.py",
                                  "memtrain_decoupled"),
      "mem1": Stage("mem1", f"configs/paper/mem1_{backbone}.py", None),
      "memtrain_mem1": Stage("memtrain_mem1", f"configs/paper/mem1_{backbone}.py", "memtrain"),
  }


@dataclasses.dataclass(frozen=True)
class Row:
  """A table row: the model it evaluates (a stage's export, or the base model) and its table."""
  name: str  # the row's model name in the eval (and the file names)
  label: str  # as the paper prints it
  table: str  # 'table1' (long-text QA), 'table2' (search QA) or 'ablation' (long-text QA)
  stage: str | None  # None = the base model itself


ROWS = {
    "table1_base": Row("base", "{backbone}", "table1", None),
    "table1_memtrain": Row("memtrain", "+MemTrain", "table1", "memtrain"),
    "table1_memagent": Row("memagent", "+MemAgent", "table1", "memagent"),
    "table1_memtrain_memagent": Row("memtrain_memagent", "+MemTrain+MemAgent", "table1",
                                    "memtrain_memagent"),
    "table2_base": Row("base", "{backbone}", "table2", None),
    "table2_mem1": Row("mem1", "+MEM1", "table2", "mem1"),
    "table2_memtrain_mem1": Row("memtrain_mem1", "+MemTrain+MEM1", "table2", "memtrain_mem1"),
    "ablation_end_to_end": Row("end_to_end_memagent", "End-to-End", "ablation",
                               "end_to_end_memagent"),
    "ablation_decoupled": Row("decoupled_memagent", "Decoupled", "ablation", "decoupled_memagent"),
    "ablation_full": Row("memtrain_memagent", "Full", "ablation", "memtrain_memagent"),
}

BACKBONES = {"qwen3_4b": ("Qwen3-4B-Instruct-2507", "~/models/Qwen3-4B-Instruct-2507"),
             "qwen2_5_7b": ("Qwen2.5-7B-Instruct", "~/models/Qwen2.5-7B-Instruct")}
CPU_BACKBONE = ("SmolLM2-135M-Instruct", "bundled:smollm2-135m-instruct")


def _eval_config(table: str, scale: str) -> str:
  if scale == "cpu":
    return "configs/eval/cpu_chain.py"
  return "configs/eval/paper_table2.py" if table == "table2" else "configs/eval/paper_table1.py"


class Chain:
  """Runs stages and evaluations under one root directory."""

  def __init__(self, root: str, scale: str, backbone: str = "qwen3_4b", model_path: str = "",
               train_overrides: tuple[str, ...] = (), eval_overrides: tuple[str, ...] = (),
               dry_run: bool = False):
    if scale not in ("cpu", "paper"):
      raise ValueError(f"--scale must be 'cpu' or 'paper', got {scale!r}")
    if scale == "paper" and backbone not in BACKBONES:
      raise ValueError(f"--backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    self.root = os.path.abspath(os.path.expanduser(root))
    self.scale = scale
    self.backbone_label, default_path = CPU_BACKBONE if scale == "cpu" else BACKBONES[backbone]
    self.base_model = model_path or default_path
    self.stages = _cpu_stages() if scale == "cpu" else _paper_stages(backbone)
    self.train_overrides = tuple(train_overrides)
    self.eval_overrides = tuple(eval_overrides)
    self.dry_run = dry_run
    self.commands: list[list[str]] = []  # what ran (or would run, in a dry run)

  def export_dir(self, stage: str) -> str:
    return os.path.join(self.root, stage, "hf")

  def model_path(self, stage: str | None) -> str:
    return self.base_model if stage is None else self.export_dir(stage)

  def _run(self, cmd: list[str], log_path: str) -> None:
    self.commands.append(cmd)
    print("$ " + " ".join(cmd), flush=True)
    if self.dry_run:
      return
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a") as log:
      proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}; "
                         f"see {log_path}")
    print(f"  done in {time.time() - start:.0f}s (log {log_path})", flush=True)

  def train(self, stage_name: str) -> str:
    """Runs a stage (after its parent) unless its export exists; returns the export directory."""
    stage = self.stages[stage_name]
    start_from = self.base_model if stage.parent is None else self.train(stage.parent)
    out = self.export_dir(stage_name)
    if os.path.isfile(os.path.join(out, "config.json")):
      return out
    cmd = [os.path.join(os.path.dirname(sys.executable), "memtrain"), "train",
           "--config", stage.config, "--workdir", os.path.join(self.root, stage_name),
           f"--config.model.path={start_from}", *stage.overrides, *self.train_overrides]
    self._run(cmd, os.path.join(self.root, f"{stage_name}.log"))
    return out

  def evaluate(self, table: str, rows: list[Row], workdir_name: str) -> str:
    """`memtrain eval` of the rows' models for one table; returns its workdir."""
    models = tuple(f"{row.name}={self.model_path(row.stage)}" for row in rows)
    labels = []
    for row in rows:
      label = row.label.format(backbone=self.backbone_label)
      if row.stage is None and table == "table1":  # the base model is read both ways
        labels += [f"{row.name}:full_context={label}",
                   f"{row.name}:memory_agent={label} (memory agent)"]
      else:
        labels.append(f"{row.name}={label}")
    labels = tuple(labels)
    workdir = os.path.join(self.root, workdir_name)
    sections = (["--config.long_qa.enabled=false"] if table == "table2" else
                ["--config.search_qa.enabled=false"])
    cmd = [os.path.join(os.path.dirname(sys.executable), "memtrain"), "eval",
           "--config", _eval_config(table, self.scale), "--workdir", workdir,
           f"--config.models={models!r}", f"--config.report.row_names={labels!r}",
           *sections, *self.eval_overrides]
    self._run(cmd, os.path.join(self.root, f"{workdir_name}.log"))
    return workdir


def copy_results(eval_dir: str, name: str) -> list[str]:
  """Copies an eval's tables, JSON and plot to experiments/results/<name>_*; returns the paths."""
  os.makedirs(RESULTS, exist_ok=True)
  copied = []
  for file in ("table_long_qa.md", "table_search_qa.md", "results.json",
               "long_qa_accuracy_vs_length.png"):
    src = os.path.join(eval_dir, file)
    if os.path.exists(src):
      dst = os.path.join(RESULTS, f"{name}_{file}")
      shutil.copyfile(src, dst)
      copied.append(dst)
  return copied


def run_rows(row_keys: list[str], chain: Chain, results_name: str) -> str:
  """Trains every stage the rows need, evaluates their models together, copies the results."""
  rows = [ROWS[k] for k in row_keys]
  search = {r.table == "table2" for r in rows}
  if len(search) != 1:
    raise ValueError(f"rows {row_keys} mix search QA (table2) and long-text QA rows")
  for row in rows:
    if row.stage is not None:
      chain.train(row.stage)
  unique = list({r.name: r for r in rows}.values())  # "Full" is "+MemTrain+MemAgent"
  eval_dir = chain.evaluate("table2" if rows[0].table == "table2" else "table1", unique,
                            workdir_name=f"eval_{results_name}")
  if not chain.dry_run:
    for path in copy_results(eval_dir, results_name):
      print("wrote", os.path.relpath(path, REPO))
  return eval_dir


def build_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
  parser.add_argument("--root", default="", help="runs directory (default runs/chain_<scale>)")
  parser.add_argument("--backbone", choices=sorted(BACKBONES), default="qwen3_4b",
                      help="paper scale only")
  parser.add_argument("--model-path", default="", help="the base model (default per backbone)")
  parser.add_argument("--train-override", action="append", default=[],
                      help="a --config.x=y passed to every training stage (repeatable)")
  parser.add_argument("--eval-override", action="append", default=[],
                      help="a --config.x=y passed to the evaluation (repeatable)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  return parser


def _chain_from_args(args) -> Chain:
  root = args.root or os.path.join(REPO, "runs", f"chain_{args.scale}")
  return Chain(root, args.scale, args.backbone, args.model_path, tuple(args.train_override),
               tuple(args.eval_override), args.dry_run)


def row_main(row_key: str, argv: list[str] | None = None) -> int:
  """The entry point of one row's script."""
  row = ROWS[row_key]
  args = build_parser(f"Paper row {row_key}: {row.label} ({row.table}).").parse_args(argv)
  chain = _chain_from_args(args)
  run_rows([row_key], chain, f"{row_key}_{args.scale}")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = build_parser(__doc__)
  parser.add_argument("--table", choices=("table1", "table2", "ablation"), required=True)
  args = parser.parse_args(argv)
  keys = [k for k, r in ROWS.items() if r.table == args.table]
  if args.table == "ablation":
    keys.append("table1_memagent")  # Figure 3 sets the ablations against MemAgent alone
  run_rows(keys, _chain_from_args(args), f"{args.table}_{args.scale}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
