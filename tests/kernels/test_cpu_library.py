"""Building and registering the CPU kernels: the cache, failures that name their cause, builds
for the other vector widths."""

import ctypes
import os
import pathlib
import platform
import stat
import subprocess
import sys

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


_X86_WITH_COMPILER = pytest.mark.skipif(
    platform.machine() != "x86_64" or cpu_library.find_compiler() is None,
    reason="an x86-64 host with a C++ compiler")


@_X86_WITH_COMPILER
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3", "x86-64-v4"])
def test_the_kernels_compile_for_every_vector_width(march):
  """SSE (4 lanes, 16 registers), AVX2 (8, 16) and AVX-512 (16, 32): each host builds only its
  own, so the others' register blocking (and its static_asserts) is compiled here."""
  command = cpu_library.compile_command(cpu_library.find_compiler(),
                                        ("-fsyntax-only", *cpu_library._FLAGS, f"-march={march}"))
  done = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]


@_X86_WITH_COMPILER
def test_a_build_for_baseline_x86_64_passes_the_kernels_reference_tests(tmp_path):
  """The 4-lane blocking (SSE here, NEON's width on ARM) run for real: the kernels' float64 and
  XLA reference tests in a process whose kernels are built with MEMTRAIN_JAX_KERNEL_MARCH."""
  env = {**os.environ, "MEMTRAIN_JAX_KERNEL_MARCH": "x86-64",
         "MEMTRAIN_JAX_KERNEL_CACHE": str(tmp_path)}
  repo = pathlib.Path(__file__).parents[2]
  tests = ["tests/kernels/test_packed_matmul.py::test_matches_a_float64_reference",
           "tests/kernels/test_decode_attention.py::test_float32_matches_a_float64_reference",
           "tests/kernels/test_decode_attention.py::test_matches_the_xla_attention_it_replaces"]
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert " passed" in done.stdout and " skipped" not in done.stdout
  [library] = tmp_path.glob("*.so")
  panel = ctypes.CDLL(str(library)).MemtrainPackedMatmulPanel
  panel.restype = ctypes.c_int64
  assert panel() == 8  # two 4-lane vectors: the build the tests ran is the baseline one
