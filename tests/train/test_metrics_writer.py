"""Metrics writer (JSONL, TensorBoard, progress line), Timer, and rollout dumps."""

import glob
import io
import json
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
from tensorboardX.proto import event_pb2

from memtrain_jax import metrics as metrics_lib


def _read_events(directory):
  """(tag, step, value) of every scalar in the TFRecord event files of `directory`."""
  out = []
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        out.append((value.tag, event.step, value.simple_value))
  return out


def test_writer_logs_jsonl_tensorboard_and_progress(tmp_path):
  stream = io.StringIO()
  with metrics_lib.MetricsWriter(tmp_path, total_steps=4, stream=stream) as writer:
    for step in (1, 2):
      record = writer.write(step, {"loss": jnp.float32(0.5 * step), "rewards/e2e_mean": np.float64(0.25),
                                   "time/step": 2.0, "histogram": np.arange(3)}, tokens=1000)
  assert record["throughput/tokens_per_s"] == 500.0 and "histogram" not in record
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [line["step"] for line in lines] == [1, 2]
  assert lines[1]["loss"] == 1.0 and lines[1]["rewards/e2e_mean"] == 0.25
  events = _read_events(tmp_path / "tensorboard")
  assert ("loss", 2, 1.0) in events and ("throughput/tokens_per_s", 1, 500.0) in events
  console = stream.getvalue().splitlines()
  assert len(console) == 2  # not a terminal: one plain line per step
  assert console[1].startswith("step 2/4 | 2.0s/step | reward 0.250 | 500 tok/s | ETA 0:0")


def test_writer_appends_on_resume(tmp_path):
  for step in (1, 2):
    with metrics_lib.MetricsWriter(tmp_path, total_steps=2, console=False, tensorboard=False) as w:
      w.write(step, {"loss": 1.0})
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 2


def test_timer_splits_sections_and_resets():
  timer = metrics_lib.Timer()
  with timer.section("rollout"):
    time.sleep(0.05)
  out = timer.call("update", lambda x: x + 1, jnp.ones(3))
  with timer.section("rollout"):
    time.sleep(0.02)
  np.testing.assert_array_equal(out, 2 * np.ones(3))
  split = timer.pop()
  assert split["time/rollout"] >= 0.07 and split["time/update"] >= 0
  assert abs(split["time/step"] - split["time/rollout"] - split["time/update"]) < 1e-9
  assert timer.pop() == {"time/step": 0}


def test_dump_rollouts_writes_readable_text(tmp_path):
  example = metrics_lib.RolloutExample(
      document="Alpha " * 400, problem="Which city is [MASK]?", memories=["Paris is mentioned.", ""],
      answer="\\boxed{Paris}", gold=("Paris", "City of Light"), reward=1.5,
      recall=[("Eiffel", "\\boxed{Eiffel}", 1.0)])
  path = metrics_lib.dump_rollouts(tmp_path, 10, [example, example, example], max_examples=2)
  assert path.endswith(os.path.join("rollouts", "step_000010.txt"))
  text = open(path).read()
  assert text.count("step 10, rollout") == 2
  assert "memory after chunk 1:\n(empty)" in text and "gold: Paris | City of Light" in text
  assert "characters ...]" in text and "reward: 1.500" in text and "[1] target 'Eiffel'" in text
  assert len(text) < 4000  # the document is an excerpt, not the whole text
