"""Intermediate memory recall (paper §3.3): recover a [TARGET]-masked entity of an earlier chunk
from the memory written at a later step.

Indices are 0-based: memories[k] is the memory written after reading chunk k. A probe picks k among
the steps that have an earlier chunk (1 <= k <= T-1; the memory after the last chunk, which the
final answer reads, is included unless `include_final_memory` is off), then an earlier chunk l < k
that has recall candidates, then one candidate. Every occurrence of it in chunk l becomes [TARGET];
the data pipeline only offers candidates whose masking leaves neither them nor the [MASK]ed answer
visible in the chunk. The paper leaves these choices open (paper_spec §9); they are seeded.
"""

from __future__ import annotations

import numpy as np

from memtrain_jax import rewards
from memtrain_jax.agent import prompts as prompt_lib
from memtrain_jax.data.masking import mask_recall_target
from memtrain_jax.objectives.base import Probe, ProbeObjective, Trajectory
from memtrain_jax.objectives.registry import register


def _candidate_text(candidate) -> str:
  return candidate["text"] if isinstance(candidate, dict) else str(candidate)


@register("memory_recall")
class MemoryRecall(ProbeObjective):
  """Reward: strict exact match of the last \\boxed{} against the masked entity.

  Config options (all optional): `template`, a recall prompt with {memory} and {chunk} slots
  (default `agent.prompts.RECALL_TEMPLATE`); `include_final_memory` (default True).
  """

  def _option(self, name, default):
    if self.config is not None and name in self.config and self.config[name] not in (None, ""):
      return self.config[name]
    return default

  def build_probe(self, index: int, trajectory: Trajectory, rng: np.random.Generator) -> Probe | None:
    document = trajectory.document
    chunks = document["chunks"]
    candidates = document.get("recall_candidates") or [[] for _ in chunks]
    num_steps = min(len(trajectory.memories), len(chunks))
    last = num_steps - 1 if self._option("include_final_memory", True) else num_steps - 2
    # Steps k whose earlier chunks offer at least one candidate.
    has_candidates = np.array([len(c) > 0 for c in candidates[:num_steps]], bool)
    steps = [k for k in range(1, last + 1) if has_candidates[:k].any()]
    if not steps:
      return None
    k = int(rng.choice(steps))
    chunk = int(rng.choice(np.flatnonzero(has_candidates[:k])))
    for c in rng.permutation(len(candidates[chunk])):
      target = candidates[chunk][c]
      try:
        section = mask_recall_target(chunks[chunk], _candidate_text(target))
      except ValueError:  # a candidate that no longer occurs in the chunk: try the next one
        continue
      prompt = prompt_lib.render(self._option("template", prompt_lib.RECALL_TEMPLATE),
                                 memory=trajectory.memories[k], chunk=section)
      label = target.get("label", "") if isinstance(target, dict) else ""
      return Probe(trajectory=index, prompt=prompt, answers=(_candidate_text(target),), step=k,
                   info={"chunk": chunk, "target": _candidate_text(target), "label": label})
    return None

  def score(self, probe: Probe, completion: str) -> float:
    return float(rewards.training_exact_match(completion, probe.answers))
