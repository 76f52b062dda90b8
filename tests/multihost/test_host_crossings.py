"""The host <-> global array helpers (`sharding.put_host_array`, `to_host`, `any_process`) in a
real 2-process job, and a guard that nothing else in the package fetches device arrays."""

import json
import os
import re

import numpy as np

from tests.multihost.jobs import ROOT, Job

WORKER = os.path.join(ROOT, "tests", "multihost", "crossings_worker.py")


def test_helpers_across_two_processes(tmp_path):
  outputs = Job(lambda i: [WORKER], str(tmp_path / "crossings"), 2, 4).finish(timeout=300)
  results = []
  for out in outputs:
    (line,) = [l for l in out.splitlines() if l.startswith("RESULT ")]
    results.append(json.loads(line[len("RESULT "):]))
  expected_sum = int(sum((100 * p + np.arange(24)).sum() for p in range(2)))
  for i, r in enumerate(results):
    assert r["process"] == i and r["processes"] == 2
    assert r["devices"] == 8 and r["local_devices"] == 4
    assert r["global_spans_processes"] and r["global_roundtrip"]
    assert r["local_shape"] == [16, 3] and r["local_roundtrip"]
    assert r["sum"] == expected_sum and r["replicated_needed_no_gather"]
    assert r["any_of_process_1"] is True and r["any_of_none"] is False


def test_only_the_sharding_module_fetches_device_arrays():
  """`jax.device_get` on an array that spans processes raises; `sharding.to_host` gathers. So the
  package fetches through `to_host` alone (tests and experiments may do as they like)."""
  package = os.path.join(ROOT, "memtrain_jax")
  offenders = []
  for folder, _, files in os.walk(package):
    for name in files:
      if not name.endswith(".py") or os.path.join(folder, name) == os.path.join(package, "sharding.py"):
        continue
      with open(os.path.join(folder, name)) as f:
        for number, line in enumerate(f, 1):
          code = line.split("#")[0]
          if re.search(r"\bdevice_get\b|multihost_utils\.process_allgather", code):
            offenders.append(f"{os.path.relpath(f.name, ROOT)}:{number}: {line.strip()}")
  assert not offenders, "fetch through sharding.to_host instead:\n" + "\n".join(offenders)
