"""The report from known per-question scores: Table 1/2 Markdown cells, results.json, the plot."""

import json
import os

import pytest

from memtrain_jax.evaluation import config as eval_config_lib
from memtrain_jax.evaluation import longqa, report, searchqa

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config():
  cfg = eval_config_lib.eval_config()
  cfg.models = ("base=bundled:smollm2-135m-instruct", "memtrain=/unused/hf")
  cfg.long_qa.lengths = (512, 1024)
  cfg.long_qa.full_context_models = ("base",)
  cfg.search_qa.datasets = ("nq=/unused/nq.jsonl", "hotpotqa=/unused/hqa.jsonl")
  cfg.report.row_names = ("base:full_context=Base", "memtrain=+MemTrain")
  return cfg


def _long_cell(model, mode, column, sub_em, em, f1, tokens):
  records = [{"sub_em": s, "em": e, "f1": f, "prediction": "x" if s else None,
              "context_tokens": t} for s, e, f, t in zip(sub_em, em, f1, tokens)]
  return {"task": "long_qa", "model": model, "mode": mode, "column": column,
          "predictions": f"predictions/{model}-{mode}-{column}.jsonl", **longqa.aggregate(records)}


def _search_cell(model, column, ems, searches, turns):
  records = [{"em": e, "num_searches": s, "num_turns": t, "answer": "a"}
             for e, s, t in zip(ems, searches, turns)]
  return {"task": "search_qa", "model": model, "mode": "search", "column": column,
          "predictions": f"predictions/{model}-{column}.jsonl", **searchqa.aggregate(records)}


CELLS = [
    # base, full context: sub-EM 3/4 and 1/4 -> 75.00, 25.00, Avg 50.00.
    _long_cell("base", "full_context", "512", [1, 0, 1, 1], [1, 0, 0, 1], [1, 0, .5, 1],
               [500, 520, 510, 530]),
    _long_cell("base", "full_context", "1K", [0, 0, 1, 0], [0, 0, 1, 0], [0, .2, 1, 0],
               [1000, 1040, 1020, 1060]),
    # base, memory agent: 2/4 and 2/4 -> 50.00, 50.00, Avg 50.00.
    _long_cell("base", "memory_agent", "512", [1, 1, 0, 0], [1, 0, 0, 0], [1, .5, 0, 0],
               [500, 520, 510, 530]),
    _long_cell("base", "memory_agent", "1K", [0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1],
               [1000, 1040, 1020, 1060]),
    # memtrain: 512 only (1/3 -> 33.33), 1K missing -> "–" and no Avg.
    _long_cell("memtrain", "memory_agent", "512", [1, 0, 0], [0, 0, 0], [.25, 0, 0],
               [500, 520, 510]),
    # search: base nq tasks EM (1, .5, 0) -> 50.00; hotpotqa (.5, .5) -> 50.00; Avg 50.00.
    _search_cell("base", "nq", [1, .5, 0], [1, 2, 0], [2, 3, 1]),
    _search_cell("base", "hotpotqa", [.5, .5], [0, 1], [1, 2]),
    _search_cell("memtrain", "nq", [0, .5], [3, 3], [4, 4]),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("report"))
  results = report.write_report(CELLS, _config(), workdir)
  return workdir, results


def _read(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return f.read()


def test_long_qa_table_cells_are_hand_computed_percentages(written):
  workdir, _ = written
  text = _read(workdir, report.LONG_QA_TABLE)
  sub_em = text.split("## sub-EM accuracy")[1].split("## exact match")[0]
  assert "| Model | 512 | 1K | Avg |" in sub_em
  assert "| Base | 75.00 | 25.00 | 50.00 |" in sub_em
  # Two rows of one model, no "name:mode" label: the mode is appended to the default label.
  assert "| base (memory agent) | 50.00 | 50.00 | 50.00 |" in sub_em
  assert "| +MemTrain | 33.33 | – | – |" in sub_em
  em = text.split("## exact match")[1].split("## F1")[0]
  assert "| Base | 50.00 | 25.00 | 37.50 |" in em
  f1 = text.split("## F1")[1].split("## answers with")[0]
  assert "| Base | 62.50 | 30.00 | 46.25 |" in f1
  assert "| +MemTrain | 8.33 | – | – |" in f1
  boxed = text.split("## answers with a closed \\boxed{} (%)")[1]
  assert "| Base | 75.00 | 25.00 | 50.00 |" in boxed  # a prediction wherever sub-EM is 1 here


def test_long_qa_rows_list_full_context_before_memory_agent(written):
  workdir, _ = written
  sub_em = _read(workdir, report.LONG_QA_TABLE).split("## exact match")[0]
  rows = [line.split("|")[1].strip() for line in sub_em.splitlines() if line.startswith("| ")]
  assert rows == ["Model", "Base", "base (memory agent)", "+MemTrain"]


def test_search_table_cells_and_budget_use(written):
  workdir, _ = written
  text = _read(workdir, report.SEARCH_QA_TABLE)
  assert "| Model | nq | hotpotqa | Avg |" in text
  assert "| base | 50.00 | 50.00 | 50.00 |" in text
  assert "| +MemTrain | 25.00 | – | – |" in text
  assert "| base | 1.00 / 2.00 | 0.50 / 1.50 |" in text


def test_results_json_holds_the_numbers_and_files(written):
  workdir, results = written
  with open(os.path.join(workdir, report.RESULTS), encoding="utf-8") as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(results))
  long_rows = {(r["model"], r["mode"]): r for r in on_disk["long_qa"]["rows"]}
  assert on_disk["long_qa"]["columns"] == ["512", "1K"]
  full = long_rows[("base", "full_context")]
  assert full["cells"]["512"]["sub_em"] == pytest.approx(0.75)
  assert full["cells"]["512"]["num_questions"] == 4
  assert full["cells"]["1K"]["context_tokens_mean"] == pytest.approx(1030)
  assert full["avg"] == pytest.approx({"sub_em": 0.5, "em": 0.375, "f1": 0.4625})
  assert long_rows[("memtrain", "memory_agent")]["avg"]["sub_em"] is None
  search = {r["model"]: r for r in on_disk["search_qa"]["rows"]}
  assert search["base"]["avg"]["em"] == pytest.approx(0.5)
  assert search["base"]["cells"]["nq"]["searches_mean"] == pytest.approx(1.0)
  assert on_disk["files"] == {"table_long_qa": report.LONG_QA_TABLE,
                              "plot_long_qa": report.PLOT,
                              "table_search_qa": report.SEARCH_QA_TABLE}
  assert "predictions/base-full_context-512.jsonl" in on_disk["predictions"]
  assert on_disk["config"]["models"] == list(_config().models)


def test_plot_is_a_png(written):
  workdir, _ = written
  with open(os.path.join(workdir, report.PLOT), "rb") as f:
    data = f.read()
  assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_missing_matplotlib_names_the_install_command(monkeypatch, tmp_path):
  import builtins
  real_import = builtins.__import__

  def no_matplotlib(name, *args, **kwargs):
    if name.startswith("matplotlib"):
      raise ImportError("No module named 'matplotlib'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_matplotlib)
  with pytest.raises(ImportError, match="pip install matplotlib"):
    report.plot_long_qa([], ["512"], str(tmp_path / "x.png"), "t")
