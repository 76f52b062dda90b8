"""Building and registering the CPU kernels: the cache, failures that name their cause."""

import stat

import pytest

from memtrain_jax.kernels import cpu_library


def test_build_is_cached_and_rebuilt_for_a_new_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("MEMTRAIN_JAX_KERNEL_CACHE", str(tmp_path))
  library = cpu_library.build()
  assert library.parent == tmp_path and library.exists()
  built = library.stat().st_mtime_ns
  assert cpu_library.build() == library and library.stat().st_mtime_ns == built
  assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no leftovers from the build


def test_build_failures_name_the_cause(tmp_path, monkeypatch):
  monkeypatch.setenv("MEMTRAIN_JAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setattr(cpu_library, "find_compiler", lambda: None)
  with pytest.raises(cpu_library.KernelUnavailableError, match="no C.. compiler found.*'xla'"):
    cpu_library.build()
  broken = tmp_path / "broken-c++"
  broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                    "echo 'fatal: out of cheese' >&2\nexit 1\n")
  broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
  with pytest.raises(cpu_library.KernelUnavailableError, match="(?s)failed.*out of cheese"):
    cpu_library.build(str(broken))
  assert not any(p.suffix == ".so" for p in tmp_path.iterdir())


def test_a_failed_build_is_remembered_not_retried(monkeypatch):
  calls = []

  def failing_build():
    calls.append(1)
    raise cpu_library.KernelUnavailableError("boom")

  monkeypatch.setattr(cpu_library, "build", failing_build)
  cpu_library._load_once.cache_clear()
  try:
    assert cpu_library.unavailable_reason() == "boom" and cpu_library.unavailable_reason() == "boom"
    with pytest.raises(cpu_library.KernelUnavailableError, match="boom"):
      cpu_library.load()
    assert len(calls) == 1
  finally:
    cpu_library._load_once.cache_clear()
    monkeypatch.undo()
  assert cpu_library.unavailable_reason() is None  # registering again after a success is harmless

