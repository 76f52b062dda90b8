"""The test setup: the test processes' XLA flags (`tests/xla_flags.py`) and the files
`conftest.py` hands out first."""

import os

import jax

from tests.xla_flags import flags_for_tests, single_device_flags


def test_flags_add_eight_devices_and_level_0_and_keep_what_is_set():
  assert flags_for_tests("").split() == ["--xla_force_host_platform_device_count=8",
                                         "--xla_backend_optimization_level=0"]
  kept = "--xla_backend_optimization_level=3 --xla_force_host_platform_device_count=4"
  assert flags_for_tests(kept) == kept
  assert flags_for_tests("--xla_dump_to=/tmp/x").startswith("--xla_dump_to=/tmp/x ")


def test_this_process_runs_with_them_and_subprocesses_get_one_device(monkeypatch):
  flags = os.environ["XLA_FLAGS"].split()
  assert "--xla_force_host_platform_device_count=8" in flags and jax.device_count() == 8
  assert any(f.startswith("--xla_backend_optimization_level=") for f in flags)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x")
  assert single_device_flags() == "--xla_dump_to=/tmp/x"


def test_the_files_handed_out_first_exist():
  """A renamed file would silently drop out of the head of the queue (slower CI, nothing else)."""
  from tests.conftest import _LONGEST_FILES, _TESTS_DIR
  assert len(set(_LONGEST_FILES)) == len(_LONGEST_FILES)
  for path in _LONGEST_FILES:
    assert os.path.isfile(os.path.join(_TESTS_DIR, path)), f"{path}: update conftest._LONGEST_FILES"
