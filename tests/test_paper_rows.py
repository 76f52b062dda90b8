"""experiments/paper_rows.py: each paper row is the right chain of stages, shared and resumable."""

import os

import pytest

from experiments import paper_rows


def _stage_of(cmd):
  return os.path.basename(cmd[cmd.index("--workdir") + 1])


def _flag(cmd, name):
  return next(c.split("=", 1)[1] for c in cmd if c.startswith(f"--config.{name}="))


def test_memtrain_then_memagent_chains_the_export(tmp_path):
  chain = paper_rows.Chain(str(tmp_path), "cpu", dry_run=True)
  paper_rows.run_rows(["table1_memtrain_memagent"], chain, "x")
  train_cmds = [c for c in chain.commands if c[1] == "train"]
  assert [_stage_of(c) for c in train_cmds] == ["memtrain", "memtrain_memagent"]
  assert _flag(train_cmds[0], "model.path") == "bundled:smollm2-135m-instruct"
  assert _flag(train_cmds[1], "model.path") == str(tmp_path / "memtrain" / "hf")
  assert train_cmds[1][train_cmds[1].index("--config") + 1] == "configs/memagent_cpu.py"
  eval_cmd = chain.commands[-1]
  assert eval_cmd[1] == "eval"
  assert _flag(eval_cmd, "models") == repr((f"memtrain_memagent={tmp_path}/memtrain_memagent/hf",))
  assert "--config.search_qa.enabled=false" in eval_cmd


def test_a_finished_stage_is_not_run_again(tmp_path):
  (tmp_path / "memtrain" / "hf").mkdir(parents=True)
  (tmp_path / "memtrain" / "hf" / "config.json").write_text("{}")
  chain = paper_rows.Chain(str(tmp_path), "cpu", dry_run=True)
  paper_rows.run_rows(["table1_memtrain", "table1_memtrain_memagent"], chain, "x")
  assert [_stage_of(c) for c in chain.commands if c[1] == "train"] == ["memtrain_memagent"]


def test_the_ablation_trains_each_stage_once_and_evaluates_four_models(tmp_path, capsys):
  paper_rows.main(["--table", "ablation", "--scale", "paper", "--backbone", "qwen2_5_7b",
                   "--root", str(tmp_path), "--dry-run"])
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("$ ")]
  stages = [l.split("--workdir ")[1].split()[0] for l in lines if " train " in l]
  assert sorted(os.path.basename(s) for s in stages) == sorted([
      "memtrain_end_to_end", "end_to_end_memagent", "memtrain_decoupled", "decoupled_memagent",
      "memtrain", "memtrain_memagent", "memagent"])
  (eval_line,) = [l for l in lines if " eval " in l]
  for label in ("End-to-End", "Decoupled", "Full", "+MemAgent"):
    assert label in eval_line


def test_every_row_has_its_script():
  assert {r.table for r in paper_rows.ROWS.values()} == {"table1", "table2", "ablation"}
  for key in paper_rows.ROWS:
    assert os.path.exists(os.path.join(paper_rows.REPO, "experiments", f"{key}.py")), key


def test_paper_scale_uses_the_backbone_configs(tmp_path):
  chain = paper_rows.Chain(str(tmp_path), "paper", backbone="qwen2_5_7b", dry_run=True)
  paper_rows.run_rows(["table2_memtrain_mem1"], chain, "x")
  configs = [c[c.index("--config") + 1] for c in chain.commands]
  assert configs == ["configs/paper/memtrain_qwen2_5_7b.py", "configs/paper/mem1_qwen2_5_7b.py",
                     "configs/eval/paper_table2.py"]
  assert _flag(chain.commands[0], "model.path") == "~/models/Qwen2.5-7B-Instruct"
  assert "--config.long_qa.enabled=false" in chain.commands[-1]


def test_rows_of_different_tasks_cannot_share_an_evaluation(tmp_path):
  chain = paper_rows.Chain(str(tmp_path), "cpu", dry_run=True)
  with pytest.raises(ValueError, match="mix"):
    paper_rows.run_rows(["table1_base", "table2_mem1"], chain, "x")
