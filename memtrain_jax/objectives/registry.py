"""Objectives by name: `@register("name")` on a class, `make("name", config)` to build one."""

from __future__ import annotations

import importlib

_REGISTRY: dict[str, type] = {}
# Built-in objectives live in these modules; importing one registers its classes.
_BUILTIN_MODULES = ("memtrain_jax.objectives.masked_reconstruction",
                    "memtrain_jax.objectives.qa_final_answer",
                    "memtrain_jax.objectives.memory_recall")


def register(name: str):
  def wrap(cls):
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"objective {name!r} is already registered by {_REGISTRY[name].__module__}")
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return wrap


def _load_builtins() -> None:
  for module in _BUILTIN_MODULES:
    importlib.import_module(module)


def available() -> list[str]:
  _load_builtins()
  return sorted(_REGISTRY)


def make(name: str, config=None, *, module: str | None = None):
  """Builds objective `name`; `module` is imported first (for objectives outside this package)."""
  _load_builtins()
  if module:
    importlib.import_module(module)
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; registered: {sorted(_REGISTRY)}. A new objective "
                     "is a class decorated with @memtrain_jax.objectives.register(name) in a module "
                     "named by the config's `module` field")
  return _REGISTRY[name](config)
