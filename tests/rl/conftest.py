"""Shared fixtures for the rl tests."""

import jax
import pytest


@pytest.fixture
def enable_x64():
  """Runs a test with 64-bit JAX types, restoring the previous setting afterwards."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
