"""Builds the CPU kernels (XLA FFI custom calls) into one library and registers them with XLA.

The kernels are C++ (`*_cpu.cc` here) compiled on first use with the host's compiler (`$CXX`, else
`g++`/`c++`/`clang++`) for the host CPU, and cached under `$MEMTRAIN_JAX_KERNEL_CACHE` (default
`~/.cache/memtrain_jax/kernels`), keyed by the sources, jaxlib's version, the compiler, the flags
and the CPU. `$MEMTRAIN_JAX_KERNEL_MARCH` (default `native`) is the `-march` they are built for:
e.g. `x86-64-v3` to build on a login node for AVX2 workers. The kernels size their register blocks
to the target's vectors (`cpu_vectors.h`), so a build for a narrower target runs correctly but
slower on a wider host.
Without a working compiler `unavailable_reason()` says why, and the sampler's "auto" settings fall
back to XLA (`sampling.sampler`), which computes the same results.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax

_HERE = pathlib.Path(__file__).parent
# Compiled together into one library; the header is shared by the sources (and part of the key).
SOURCES = (_HERE / "decode_attention_cpu.cc", _HERE / "packed_matmul_cpu.cc")
HEADERS = (_HERE / "cpu_parallel.h", _HERE / "cpu_vectors.h")
# XLA custom-call target -> the handler's symbol in the library.
TARGETS = {
    "memtrain_decode_attention_cpu": "MemtrainDecodeAttention",
    "memtrain_packed_matmul_cpu": "MemtrainPackedMatmul",
}
_FLAGS = ("-O3", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC")


def compiler_flags() -> tuple[str, ...]:
  """The build's flags: `_FLAGS` and -march=$MEMTRAIN_JAX_KERNEL_MARCH (default native)."""
  return (*_FLAGS, f"-march={os.environ.get('MEMTRAIN_JAX_KERNEL_MARCH') or 'native'}")


def compile_command(compiler: str, flags: tuple[str, ...]) -> list[str]:
  """The compiler's command line for the sources with `flags`, without an output."""
  return [compiler, *flags, f"-I{jax.ffi.include_dir()}", f"-I{_HERE}", *map(str, SOURCES)]


class KernelUnavailableError(RuntimeError):
  """The CPU kernels could not be built or loaded; the message says why."""


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("MEMTRAIN_JAX_KERNEL_CACHE")
                      or pathlib.Path.home() / ".cache" / "memtrain_jax" / "kernels")


def find_compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    path = shutil.which(name) if name else None
    if path:
      return path
  return None


def _cpu_signature() -> str:
  """What `-march=native` depends on: the CPU's feature flags (Linux), else the processor name."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def build(compiler: str | None = None) -> pathlib.Path:
  """Compiles the kernels (once per sources, jaxlib, compiler and CPU); returns the library path.

  Raises KernelUnavailableError with the compiler's output when there is no compiler or the
  build fails.
  """
  import jaxlib
  compiler = compiler or find_compiler()
  if compiler is None:
    raise KernelUnavailableError(
        "no C++ compiler found (tried $CXX, g++, c++, clang++); install one (e.g. `apt install "
        "g++`) or set sampling.decode_attention, sampling.decode_matmul and "
        "sampling.prefill_matmul to 'xla'")
  try:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise KernelUnavailableError(f"C++ compiler {compiler!r} does not run: {e}") from e
  key = hashlib.sha256("\0".join([
      *(path.read_text() for path in SOURCES + HEADERS), jaxlib.__version__, version,
      " ".join(compiler_flags()), _cpu_signature(), platform.machine()]).encode()).hexdigest()[:16]
  library = cache_dir() / f"memtrain_kernels_{key}.so"
  if library.exists():
    return library
  library.parent.mkdir(parents=True, exist_ok=True)
  # Build to a private name, then rename: concurrent builds (test workers, several hosts on one
  # home directory) never load a half-written library.
  with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
    partial = pathlib.Path(tmp) / library.name
    command = compile_command(compiler, compiler_flags()) + ["-o", str(partial)]
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
      raise KernelUnavailableError(f"building the CPU kernels failed: {e}") from e
    if done.returncode != 0:
      raise KernelUnavailableError(
          f"building the CPU kernels failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    os.replace(partial, library)
  return library


@functools.cache
def _load_once():
  """(the loaded library, None) or (None, why it is unavailable); built and registered with XLA
  once per process (a failure is remembered too, not retried)."""
  import ctypes
  try:
    library = build()
  except KernelUnavailableError as e:
    return None, str(e)
  try:
    loaded = ctypes.cdll.LoadLibrary(str(library))
    handlers = {target: getattr(loaded, symbol) for target, symbol in TARGETS.items()}
  except (OSError, AttributeError) as e:
    return None, f"loading {library} failed: {e}; delete it to rebuild"
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
  return loaded, None


def unavailable_reason() -> str | None:
  """Builds the kernels if needed and registers them with XLA, once per process; None on
  success, else why the kernels are unavailable."""
  return _load_once()[1]


def load():
  """Makes the kernels callable and returns the library (a `ctypes.CDLL`, for the build's
  constants such as the packed matmul's panel width); raises KernelUnavailableError saying why
  the kernels cannot be loaded."""
  loaded, reason = _load_once()
  if reason is not None:
    raise KernelUnavailableError(reason)
  return loaded
