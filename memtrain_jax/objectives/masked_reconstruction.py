"""End-to-end masked reconstruction (paper §3.2): name the entity behind [MASK] from the final memory."""

from __future__ import annotations

from memtrain_jax.objectives.base import TrajectoryObjective
from memtrain_jax.objectives.registry import register

DEFAULT_PROBLEM = "Based on the entire article, which entity is represented by the [MASK] placeholder?"


@register("masked_reconstruction")
class MaskedReconstruction(TrajectoryObjective):
  """The [MASK] question; the reward is the base class's exact match against the entity."""

  def problem(self, document: dict) -> str:
    if self.config is not None and self.config.get("problem"):
      return self.config.problem
    return DEFAULT_PROBLEM
