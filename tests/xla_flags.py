"""The XLA flags of the test processes (`conftest.py` sets them before jax starts).

- 8 virtual CPU devices, for the sharded tests.
- XLA:CPU's LLVM backend at optimisation level 0 (XLA's default is 3). The suite compiles
  hundreds of small programs and runs most of them a few times, so compiling is most of its time:
  on a 2-core AMD EPYC, with a cold compile cache, it took 11 min 40 s at level 0 against 17 min
  57 s at the default (555 passed either way). The programs are the same HLO, so what the tests
  check does not change; only the generated machine code is less optimised. Real runs keep the
  default: the main job took 280 s at level 0 against 258 s (faster compiles, slower steps). An
  optimisation level already in XLA_FLAGS is kept.
"""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"


def flags_for_tests(flags: str) -> str:
  """`flags` plus 8 host devices and optimisation level 0, each unless `flags` sets it."""
  words = flags.split()
  if not any(w.startswith(DEVICE_COUNT_FLAG) for w in words):
    words.append(f"{DEVICE_COUNT_FLAG}=8")
  if not any(w.startswith(OPT_LEVEL_FLAG) for w in words):
    words.append(f"{OPT_LEVEL_FLAG}=0")
  return " ".join(words)


def single_device_flags() -> str:
  """This process's XLA_FLAGS without the device count: for subprocesses that run on one device
  (and keep the fast compiles)."""
  return " ".join(w for w in os.environ.get("XLA_FLAGS", "").split()
                  if not w.startswith(DEVICE_COUNT_FLAG))
