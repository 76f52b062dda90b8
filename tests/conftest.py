"""Test-wide setup: 8 virtual CPU devices, a persistent compile cache, shared fixtures.

XLA_FLAGS must be set before jax initialises its backends, so this runs at import time.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  config.addinivalue_line("markers", "real_model: uses the real SmolLM2-135M (slower)")


@pytest.fixture(scope="session")
def bundled_model_path():
  from memtrain_jax.models import bundled_gguf_path
  return bundled_gguf_path()
