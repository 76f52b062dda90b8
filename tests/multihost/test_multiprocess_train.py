"""`memtrain train` as a 2-process job (2 "hosts" x 4 CPU devices over gloo) on this machine.

What a TPU pod slice or a multi-node GPU job does, checked locally: every process runs the same
program over one global mesh of 8 devices, and the run must be the same run as on 1 process x 8
devices; a process killed with -9 must cost nothing but time; SIGTERM on every host must save once
and exit 0; only process 0 may write outside the checkpoint shards.

Tolerance of the 1-process comparison: the rollouts (every sampled token, so every row, reward and
memory) and the first update match bitwise. Later updates differ in the last bits, because the
gradients' cross-device sums run over gloo between two processes and in-process within one, in a
different order. The tiny random model's rewards are all 0, so its gradient is a sum of cancelling
terms (loss ~1e-7) and that order shows at ~3e-4 of the gradient norm; Adam passes it on to the
weights at ~5e-6 after 3 steps of lr 1e-3. Hence: rollout metrics exact, update metrics to
rtol 2e-3, exported weights to atol 5e-5 (a step moves them by ~1e-3). The reference process
uses gloo too (a 1-process distributed job), so the test isolates where the devices live.
Between 2-process runs (interrupted or not) everything is bitwise.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from memtrain_jax.models.safetensors_io import SafetensorsFile
from tests.multihost.jobs import ROOT, Job

CONFIG = os.path.join(ROOT, "tests", "train", "tiny_loop_config.py")
LAUNCH = os.path.join(ROOT, "tests", "multihost", "launch_train.py")
OVERRIDES = ("--config.rl.packing.micro_batch_size=8", "--config.train.num_steps=3")
# Values that depend on wall-clock time or on the process, not on what was computed.
_PROCESS_LOCAL = ("wall_time", "time/", "throughput/", "compile/")
# Metrics of the updates (reduced across devices), compared with a tolerance (module docstring).
_UPDATE = ("train/",)
UPDATE_RTOL, WEIGHTS_ATOL = 2e-3, 5e-5


def _train_job(model_dir, workdir, num_processes, devices_per_process, *extra,
               log_writes_dir=None) -> Job:
  """A `memtrain train` run of the tiny config in `workdir` (`launch_train.py` per process)."""

  def argv_for(i):
    argv = [LAUNCH]
    if log_writes_dir is not None:
      argv += ["--log_writes", os.path.join(str(log_writes_dir), f"writes_{i}.jsonl")]
    return argv + ["--", "--config", f"{CONFIG}:{model_dir}", "--workdir", str(workdir),
                   *OVERRIDES, *extra]

  return Job(argv_for, str(workdir), num_processes, devices_per_process)


def _metrics(workdir):
  """The last record of each step (a resumed run logs a step again after a kill)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["step"]: r for r in map(json.loads, f)}


def _computed(record):
  return {k: v for k, v in record.items() if not k.startswith(_PROCESS_LOCAL)}


def _checkpoint_done(workdir, step):
  # Orbax writes into a temporary folder and renames it when every process's part is saved.
  return os.path.exists(os.path.join(workdir, "checkpoints", str(step), "extra"))


def _exported(workdir):
  f = SafetensorsFile(os.path.join(workdir, "hf", "model.safetensors"))
  return {k: np.array(f.get(k)) for k in f.keys()}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
  """The uninterrupted runs: 1 process x 8 devices and 2 processes x 4 devices, run together."""
  root = tmp_path_factory.mktemp("multihost")
  (root / "writes").mkdir()
  one = _train_job(tiny_model_dir, root / "one_by_eight", 1, 8)
  two = _train_job(tiny_model_dir, root / "two_by_four", 2, 4, log_writes_dir=root / "writes")
  outputs = {"one": one.finish(), "two": two.finish()}
  return {"one": str(root / "one_by_eight"), "two": str(root / "two_by_four"),
          "writes": root / "writes", "outputs": outputs}


def test_two_processes_give_the_run_of_one_process(runs):
  one, two = _metrics(runs["one"]), _metrics(runs["two"])
  assert sorted(one) == sorted(two) == [1, 2, 3]
  for step in one:
    a, b = _computed(one[step]), _computed(two[step])
    assert a.keys() == b.keys()
    assert a["train/updates"] >= 1 and b["train/skipped_updates"] == 0
    for key in a:
      if key.startswith(_UPDATE) and not (step == 1 and key != "train/updates"):
        np.testing.assert_allclose(b[key], a[key], rtol=UPDATE_RTOL, atol=1e-12,
                                   err_msg=f"step {step} {key}")
      else:  # the rollouts, and the whole first update, bitwise
        assert a[key] == b[key], f"step {step} {key}: {a[key]} != {b[key]}"
  pa, pb = _exported(runs["one"]), _exported(runs["two"])
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pb[k], pa[k], rtol=0, atol=WEIGHTS_ATOL, err_msg=k)
  # The rollout crossed processes: the gathers are counted.
  assert "cross-process gathers" in runs["outputs"]["two"][1]
  assert "(0 of them cross-process gathers)" not in runs["outputs"]["two"][1]


def test_only_process_0_writes_outside_the_checkpoints(runs):
  workdir = os.path.realpath(runs["two"])

  def written(i):
    with open(runs["writes"] / f"writes_{i}.jsonl") as f:
      paths = {os.path.realpath(json.loads(line)["path"]) for line in f}
    return {p for p in paths if p == workdir or p.startswith(workdir + os.sep)}

  first, second = written(0), written(1)
  # Process 0 wrote the config, data, metrics, dumps and export (the hook sees them) ...
  rel = lambda paths: {os.path.relpath(p, workdir).split(os.sep)[0] for p in paths}
  assert {"config.json", "metrics.jsonl", "data", "rollouts", "hf", "tensorboard"} <= rel(first)
  # ... process 1 nothing but its checkpoint shards.
  assert rel(second) <= {"checkpoints"}, sorted(second)


def test_sigterm_then_kill9_then_resume_reproduce_the_uninterrupted_run(runs, tiny_model_dir,
                                                                         tmp_path):
  workdir = str(tmp_path / "interrupted")
  # SIGTERM to every process once step 1 is saved: they agree on a step, save it, and exit 0.
  job = _train_job(tiny_model_dir, workdir, 2, 4)
  job.wait_for(lambda: _checkpoint_done(workdir, 1), "checkpoint 1")
  for p in job.procs:
    p.send_signal(signal.SIGTERM)
  outputs = job.finish()
  assert all("received SIGTERM" in out and "stopping after step" in out for out in outputs)
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  stopped_at = max(_metrics(workdir))
  assert saved[-1] == stopped_at < 3
  assert not os.path.exists(os.path.join(workdir, "hf"))  # stopped early: no export

  # Restart both; kill -9 process 1 in the middle of the next step (process 0 then fails or hangs
  # in a collective, as a real host would; the scheduler kills the job).
  job = _train_job(tiny_model_dir, workdir, 2, 4)
  job.wait_for(lambda: f"resumed from the checkpoint of step {stopped_at}" in job.output(0),
               "the resume")
  time.sleep(3)
  job.kill(1)
  job.kill(0)
  assert not _checkpoint_done(workdir, 3)  # killed mid-step: step 3 is lost

  # Restart both again: the run completes and is the uninterrupted 2-process run, bit for bit.
  job = _train_job(tiny_model_dir, workdir, 2, 4)
  outputs = job.finish()
  assert "resumed from the checkpoint of step" in outputs[0]
  reference, resumed = _metrics(runs["two"]), _metrics(workdir)
  assert sorted(resumed) == [1, 2, 3]
  for step in reference:
    assert _computed(reference[step]) == _computed(resumed[step]), f"step {step}"
  pa, pb = _exported(runs["two"]), _exported(workdir)
  for k in pa:
    np.testing.assert_array_equal(pb[k], pa[k], err_msg=k)
