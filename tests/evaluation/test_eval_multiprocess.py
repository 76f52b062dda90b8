"""`memtrain eval` as a 2-process job (2 "hosts" x 4 CPU devices over gloo) on this machine.

What an evaluation on a TPU pod slice does, checked locally: every process runs every cell over one
global mesh of 8 devices, process 0 alone writes the workdir, and the report must be the report of
1 process x 8 devices. The reference process is a 1-process distributed job (gloo collectives too),
so the comparison isolates where the devices live.

Tolerance: none. The sampler's math has no cross-device reductions (the batch is split over the
devices, the weights replicated), so with greedy decoding every token, prediction and score is
bitwise the same; only the cells' wall times ("seconds") differ between the two runs.

The tiny random Llama (the `tiny_model_dir` fixture) keeps this cheap: one model, one length, two
questions, the memory agent only, budgets of a few tokens.
"""

import json
import os

import pytest

from memtrain_jax.evaluation import report
from tests.multihost.jobs import ROOT, Job

CONFIG = os.path.join(ROOT, "configs", "eval", "cpu_chain.py")
LAUNCH = os.path.join(ROOT, "tests", "multihost", "launch_eval.py")
# Values that depend on wall-clock time, not on what was computed.
_TIMING = ("seconds",)


def _overrides(model_dir):
  return [f"--config.models=('base={model_dir}',)", "--config.search_qa.enabled=False",
          "--config.long_qa.modes=('memory_agent',)", "--config.long_qa.question_count=2",
          "--config.long_qa.lengths=(256,)", "--config.agent.chunk_size=128",
          "--config.agent.memory_max_tokens=8", "--config.agent.answer_max_tokens=6"]


class EvalJob(Job):
  """N processes of one `memtrain eval` run (`launch_eval.py` per process), each writing the dict
  its `run_eval` returned to `results[i]`."""

  def __init__(self, model_dir, workdir, num_processes, devices_per_process, *,
               log_writes_dir=None):
    self.workdir = str(workdir)
    self.results = [f"{self.workdir}.results{i}.json" for i in range(num_processes)]

    def argv_for(i):
      argv = [LAUNCH, "--results", self.results[i]]
      if log_writes_dir is not None:
        argv += ["--log_writes", os.path.join(str(log_writes_dir), f"writes_{i}.jsonl")]
      return argv + ["--", "--config", CONFIG, "--workdir", self.workdir, *_overrides(model_dir)]

    super().__init__(argv_for, self.workdir, num_processes, devices_per_process)


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _without_timing(value):
  if isinstance(value, dict):
    return {k: _without_timing(v) for k, v in value.items() if k not in _TIMING}
  if isinstance(value, list):
    return [_without_timing(v) for v in value]
  return value


def _files(workdir):
  return sorted(os.path.relpath(os.path.join(d, name), workdir)
                for d, _, names in os.walk(workdir) for name in names)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
  """1 process x 8 devices and 2 processes x 4 devices, run together."""
  root = tmp_path_factory.mktemp("eval_multiprocess")
  (root / "writes").mkdir()
  one = EvalJob(tiny_model_dir, root / "one_by_eight", 1, 8)
  two = EvalJob(tiny_model_dir, root / "two_by_four", 2, 4, log_writes_dir=root / "writes")
  outputs = {"one": one.finish(), "two": two.finish()}
  return {"one": one, "two": two, "writes": root / "writes", "outputs": outputs,
          "model_dir": tiny_model_dir}


def test_two_processes_write_the_report_of_one_process(runs):
  one, two = runs["one"].workdir, runs["two"].workdir
  assert _files(one) == _files(two)
  assert {"eval_config.json", report.RESULTS, report.LONG_QA_TABLE, report.PLOT} <= set(_files(two))
  a, b = _json(os.path.join(one, report.RESULTS)), _json(os.path.join(two, report.RESULTS))
  assert _without_timing(a) == _without_timing(b)
  (row,) = b["long_qa"]["rows"]
  assert set(row["cells"]) == {"256"} and row["cells"]["256"]["num_questions"] == 2
  cells = [f for f in _files(two) if f.startswith("cells" + os.sep)]
  assert len(cells) == 1
  for name in cells:
    assert _without_timing(_json(os.path.join(one, name))) == _without_timing(
        _json(os.path.join(two, name))), name
  for name in b["predictions"]:  # every token of every completion, bitwise
    with open(os.path.join(one, name), "rb") as f, open(os.path.join(two, name), "rb") as g:
      assert f.read() == g.read(), name
  # The sampler's outputs crossed processes.
  for out in runs["outputs"]["two"]:
    assert "cross-process gathers" in out and "(0 of them cross-process gathers)" not in out


def test_every_process_returns_process_0s_report(runs):
  two = runs["two"]
  written = _json(os.path.join(two.workdir, report.RESULTS))
  assert [_json(path) for path in two.results] == [written, written]
  assert _json(runs["one"].results[0]) == _json(os.path.join(runs["one"].workdir, report.RESULTS))


def test_only_process_0_writes_the_workdir(runs):
  workdir = os.path.realpath(runs["two"].workdir)

  def written(i):
    with open(runs["writes"] / f"writes_{i}.jsonl") as f:
      paths = {os.path.realpath(json.loads(line)["path"]) for line in f}
    return {os.path.relpath(p, workdir) for p in paths
            if p == workdir or p.startswith(workdir + os.sep)}

  first = {p.split(os.sep)[0] for p in written(0)}
  assert {"eval_config.json", "cells", "predictions", report.RESULTS, report.LONG_QA_TABLE,
          report.PLOT} <= first
  assert written(1) == set()


def test_a_rerun_on_two_processes_runs_no_cell(runs, tmp_path):
  # Process 0 reads the finished cell and every process follows it: none loads the model.
  two = runs["two"]
  before = _json(os.path.join(two.workdir, report.RESULTS))
  job = EvalJob(runs["model_dir"], two.workdir, 2, 4)
  outputs = job.finish()
  for out in outputs:
    assert "1 cells planned, 1 already done" in out and "loaded " not in out
  assert _json(os.path.join(two.workdir, report.RESULTS)) == before
  assert [_json(path) for path in job.results] == [before, before]


def test_a_gs_workdir_stays_a_url():
  from memtrain_jax.evaluation import cells
  store = cells.CellStore("gs://bucket/eval")  # touches no storage until it reads or writes
  assert os.fspath(store.predictions_path("k")) == "gs://bucket/eval/predictions/k.jsonl"
  assert os.fspath(store.cells_dir) == "gs://bucket/eval/cells"
