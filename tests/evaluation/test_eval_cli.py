"""`memtrain eval` end to end with a tiny random model: every file, consistent numbers, resume.

The tiny Llama has SmolLM2's real tokenizer and chat template and random weights, so the scores are
whatever chance gives (near 0); the tests check the plumbing and the bookkeeping, not accuracy.
"""

import json
import os

import numpy as np
import pytest

from memtrain_jax.evaluation import cli, longqa, report, runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "eval", "cpu_chain.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _argv(model_dir, workdir):
  # 'memtrain' is left out of search_qa.models: it runs on Table 1 only.
  return ["--config", CONFIG, "--workdir", workdir,
          f"--config.models=('base={model_dir}', 'memtrain={model_dir}')",
          "--config.search_qa.models=('base',)",
          "--config.long_qa.question_count=2", "--config.long_qa.lengths=(256, 512)",
          "--config.agent.chunk_size=128", "--config.agent.memory_max_tokens=8",
          "--config.agent.answer_max_tokens=6", "--config.search_qa.question_count=2",
          "--config.search_qa.max_turns=2", "--config.search_qa.max_response_tokens=16",
          "--config.search_qa.max_obs_tokens=64"]


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval"))
  assert cli.main(_argv(tiny_model_dir, workdir)) == 0
  return tiny_model_dir, workdir


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_writes_tables_plot_results_and_predictions(evaluated):
  _, workdir = evaluated
  for name in (report.RESULTS, report.LONG_QA_TABLE, report.SEARCH_QA_TABLE, "eval_config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, report.PLOT), "rb") as f:
    assert f.read(8) == PNG_MAGIC
  table = open(os.path.join(workdir, report.LONG_QA_TABLE), encoding="utf-8").read()
  assert "| Model | 256 | 512 | Avg |" in table
  for label in ("SmolLM2-135M-Instruct", "SmolLM2-135M (memory agent)", "+MemTrain"):
    assert f"| {label} |" in table
  search = open(os.path.join(workdir, report.SEARCH_QA_TABLE), encoding="utf-8").read()
  assert "| Model | hotpotqa | Avg |" in search and "+MemTrain" not in search


def test_cells_cover_the_plan_and_match_their_predictions(evaluated):
  _, workdir = evaluated
  results = _json(os.path.join(workdir, report.RESULTS))
  rows = {(r["model"], r["mode"]): r for r in results["long_qa"]["rows"]}
  assert set(rows) == {("base", "full_context"), ("base", "memory_agent"),
                       ("memtrain", "memory_agent")}
  for row in rows.values():
    assert set(row["cells"]) == {"256", "512"}
    for cell in row["cells"].values():
      records = _jsonl(os.path.join(workdir, cell["predictions"]))
      assert [r["question_index"] for r in records] == [0, 1]
      for metric in ("sub_em", "em", "f1"):
        assert cell[metric] == pytest.approx(np.mean([r[metric] for r in records]))
      assert cell["context_tokens_mean"] == pytest.approx(
          np.mean([r["context_tokens"] for r in records]))
      for record in records:
        assert record["completion"].startswith("\\boxed{")  # the prefilled answer prefix
        assert record["answers"] and record["question"]
  memory = _jsonl(os.path.join(workdir, rows[("base", "memory_agent")]["cells"]["512"]
                               ["predictions"]))
  assert all(r["num_chunks"] >= 2 for r in memory)  # 512 tokens in 128-token chunks
  search = results["search_qa"]["rows"]
  assert [r["model"] for r in search] == ["base"]
  cell = search[0]["cells"]["hotpotqa"]
  tasks = _jsonl(os.path.join(workdir, cell["predictions"]))
  assert len(tasks) == cell["num_tasks"] == 1 and len(tasks[0]["questions"]) == 2
  assert cell["em"] == pytest.approx(np.mean([t["em"] for t in tasks]))
  assert 1 <= cell["turns_mean"] <= 2


def test_a_rerun_skips_finished_cells_and_loads_no_model(evaluated, monkeypatch):
  model_dir, workdir = evaluated
  before = _json(os.path.join(workdir, report.RESULTS))

  def no_model(*args, **kwargs):
    raise AssertionError("a finished cell was run again")

  monkeypatch.setattr(runner, "_LoadedModel", no_model)
  assert cli.main(_argv(model_dir, workdir)) == 0
  assert _json(os.path.join(workdir, report.RESULTS)) == before


def test_a_rerun_after_an_interruption_runs_only_the_missing_cell(evaluated, monkeypatch):
  model_dir, workdir = evaluated
  cells_dir = os.path.join(workdir, "cells")
  missing = "long_qa__base__full_context__tokens512.json"
  os.remove(os.path.join(cells_dir, missing))  # as if the run stopped during this cell
  kept = {name: os.path.getmtime(os.path.join(cells_dir, name)) for name in os.listdir(cells_dir)}
  calls = []
  for name in ("run_full_context_cell", "run_memory_agent_cell"):
    real = getattr(longqa, name)
    monkeypatch.setattr(longqa, name,
                        lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
  assert cli.main(_argv(model_dir, workdir)) == 0
  assert calls == ["run_full_context_cell"]
  assert os.path.exists(os.path.join(cells_dir, missing))
  assert all(os.path.getmtime(os.path.join(cells_dir, n)) == t for n, t in kept.items())
