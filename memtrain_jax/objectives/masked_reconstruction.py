"""End-to-end masked reconstruction (paper §3.2): name the entity behind [MASK] from the final memory."""

from __future__ import annotations

from memtrain_jax import rewards
from memtrain_jax.objectives.base import TrajectoryObjective
from memtrain_jax.objectives.registry import register

DEFAULT_PROBLEM = "Based on the entire article, which entity is represented by the [MASK] placeholder?"


@register("masked_reconstruction")
class MaskedReconstruction(TrajectoryObjective):
  """Reward: strict exact match of the last \\boxed{} against the answer or its aliases."""

  def problem(self, document: dict) -> str:
    if self.config is not None and self.config.get("problem"):
      return self.config.problem
    return DEFAULT_PROBLEM

  def golds(self, document: dict) -> tuple[str, ...]:
    golds = [document["answer"]] + list(document.get("answer_aliases") or [])
    return tuple(dict.fromkeys(g for g in golds if g))

  def score(self, document: dict, completion: str) -> float:
    return float(rewards.training_exact_match(completion, self.golds(document)))
