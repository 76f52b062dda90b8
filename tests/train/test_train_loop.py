"""The `memtrain train` loop end to end with a tiny random model: smoke run, kill -9 resume, SIGTERM.

The tiny Llama uses SmolLM2's real tokenizer (so prompts, chat template and stop token are real)
with random weights, so rewards are whatever chance gives; the configs turn DAPO filtering off so
every step trains.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from memtrain_jax import config_lib, models
from memtrain_jax.models.safetensors_io import SafetensorsFile
from tests.xla_flags import single_device_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "tests", "train", "tiny_loop_config.py")
# Values that depend on wall-clock time or on the process (its compile count), not on what was
# computed.
_PROCESS_LOCAL = ("wall_time", "time/", "throughput/", "compile/")


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _computed(record):
  return {k: v for k, v in record.items() if not k.startswith(_PROCESS_LOCAL)}


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = single_device_flags()  # one CPU device in the subprocesses
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(ROOT, ".jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _start(model_dir, workdir, *overrides):
  cmd = [sys.executable, "-m", "memtrain_jax.train", "--config", f"{CONFIG}:{model_dir}",
         "--workdir", workdir, *overrides]
  return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _wait_for_checkpoint(workdir, step, proc, timeout=600):
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  # Orbax writes into a temporary folder and renames it when the save is complete.
  while not (os.path.isdir(path) and os.path.exists(os.path.join(path, "extra"))):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() < deadline, f"no checkpoint {step} after {timeout}s"
    time.sleep(0.2)


def _exported(workdir):
  f = SafetensorsFile(os.path.join(workdir, "hf", "model.safetensors"))
  return {k: np.array(f.get(k)) for k in f.keys()}


def test_train_loop_on_an_8_device_mesh(tiny_model_dir, tmp_path):
  """In-process: data build, rollouts, probes, sharded updates with KL, metrics, dumps, export."""
  from memtrain_jax.train import train

  cfg = config_lib.load_config(f"{CONFIG}:{tiny_model_dir}", [
      "train.num_steps=2", "mesh.shape=(1,-1,1)", "rl.packing.micro_batch_size=8"])
  workdir = str(tmp_path / "run")
  last = train(cfg, workdir)
  records = _metrics(workdir)
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    assert r["train/updates"] >= 1 and np.isfinite(r["train/loss"]) and np.isfinite(r["train/grad_norm"])
    assert r["rows/count"] > 0 and 0 <= r["accuracy/e2e_final"] <= 1
    assert r["recall/probed_fraction"] > 0  # 2-3 chunk documents always offer a probe
    assert "train/ref_kl_mean" in r and "time/rollout" in r and "time/update" in r
  assert last["step"] == 2
  assert sorted(os.listdir(os.path.join(workdir, "rollouts"))) == ["step_000001.txt", "step_000002.txt"]
  assert "memory after chunk 0" in open(os.path.join(workdir, "rollouts", "step_000002.txt")).read()
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  config, params = models.load_pretrained(os.path.join(workdir, "hf"))
  _, initial = models.load_pretrained(tiny_model_dir)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax_leaves(params), jax_leaves(initial)))
  assert moved > 1e-5


def test_mixed_precision_train_loop(tiny_model_dir, tmp_path):
  """f32 master weights, bf16 compute: rollouts sample from the bf16 copy, the update is finite,
  and the trained weights stay f32 and move."""
  from memtrain_jax.train import train

  cfg = config_lib.load_config(f"{CONFIG}:{tiny_model_dir}", [
      "train.num_steps=1", "model.compute_dtype=bfloat16", "mesh.shape=(1,-1,1)",
      "rl.packing.micro_batch_size=8"])
  workdir = str(tmp_path / "run")
  train(cfg, workdir)
  (record,) = _metrics(workdir)
  assert record["rows/count"] > 0
  assert np.isfinite(record["train/loss"]) and np.isfinite(record["train/grad_norm"])
  _, params = models.load_pretrained(os.path.join(workdir, "hf"))
  _, initial = models.load_pretrained(tiny_model_dir)
  assert all(np.asarray(a).dtype == np.float32 for a in jax_leaves(params))
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax_leaves(params), jax_leaves(initial)))
  assert moved > 1e-6


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_kill9_then_resume_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path):
  uninterrupted = str(tmp_path / "a")
  _finish(_start(tiny_model_dir, uninterrupted))

  resumed = str(tmp_path / "b")
  kill_after = random.choice([1, 2])
  proc = _start(tiny_model_dir, resumed)
  _wait_for_checkpoint(resumed, kill_after, proc)
  proc.kill()  # SIGKILL: no handler runs, whatever the step was doing is lost
  proc.wait()
  out = _finish(_start(tiny_model_dir, resumed))
  assert "resumed from the checkpoint of step" in out

  a, b = _metrics(uninterrupted), _metrics(resumed)
  # The resumed run may log a step twice (once before the kill); the last record of each step wins.
  last_b = {r["step"]: r for r in b}
  assert [r["step"] for r in a] == [1, 2, 3] and sorted(last_b) == [1, 2, 3]
  for r in a:
    assert _computed(r) == _computed(last_b[r["step"]])
  pa, pb = _exported(uninterrupted), _exported(resumed)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k])


def test_sigterm_saves_a_checkpoint_and_exits_zero(tiny_model_dir, tmp_path):
  workdir = str(tmp_path / "c")
  proc = _start(tiny_model_dir, workdir, "--config.train.num_steps=50",
                "--config.checkpoint.every=0")
  _wait_for_checkpoint_or_metrics(workdir, proc)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)
  assert "received SIGTERM" in out and "stopping after step" in out
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] == _metrics(workdir)[-1]["step"] < 50
  assert not os.path.exists(os.path.join(workdir, "hf"))  # stopped early: no export


def _wait_for_checkpoint_or_metrics(workdir, proc, timeout=600):
  deadline = time.time() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while not (os.path.exists(path) and os.path.getsize(path) > 0):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() < deadline
    time.sleep(0.2)


def test_resuming_under_a_different_config_is_refused(tmp_path):
  from memtrain_jax import train as train_lib
  from tests.train import tiny_loop_config
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "1").mkdir(parents=True)
  saved = tiny_loop_config.get_config("/models/tiny")
  (workdir / "config.json").write_text(saved.to_json())
  changed = tiny_loop_config.get_config("/models/tiny")
  changed.sampling.temperature = 0.7
  changed.train.num_steps = 9  # allowed: extending a run
  changed.mesh.shape = (1, 1, -1)  # allowed: another slice after preemption
  with pytest.raises(ValueError, match=r"differs from this one in 1 field\(s\): "
                                       r"sampling\.temperature: 1\.0 -> 0\.7.*new --workdir"):
    train_lib.train(changed, str(workdir))
  assert config_lib.resume_conflicts(json.loads(saved.to_json()), saved) == []
  assert config_lib.resume_conflicts(json.loads(saved.to_json()), changed) == [
      "sampling.temperature: 1.0 -> 0.7"]


def test_a_mesh_that_does_not_split_the_micro_batch_fails_before_any_work(tmp_path):
  # The model path does not exist: the error must come from the mesh check, before the model is
  # loaded or a rollout is sampled (it used to come after the first step's rollouts).
  from memtrain_jax import train as train_lib
  from tests.train import tiny_loop_config
  cfg = tiny_loop_config.get_config("/no/such/model")
  cfg.mesh.shape = (2, -1, 1)
  cfg.rl.packing.micro_batch_size = 3
  with pytest.raises(ValueError, match=r"micro_batch_size=3 is not divisible by the data\*fsdp "
                                       r"mesh size 8 .*multiple of 8"):
    train_lib.train(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
