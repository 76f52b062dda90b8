"""Task RL on question answering (MemAgent): the final answer's exact match is the only reward.

Documents carry their own question (`problem`) and gold aliases (`answer`, `answer_aliases`), as
`tasks.longqa` writes them; the reward is MemAgent's training verifier on the last `\\boxed{}`.
With `objectives.recall.enabled = False` this turns the MemTrain trainer into MemAgent's.
"""

from __future__ import annotations

from memtrain_jax.objectives.base import TrajectoryObjective
from memtrain_jax.objectives.registry import register


@register("qa_final_answer")
class QAFinalAnswer(TrajectoryObjective):
  """Reward: 1 when the last boxed answer equals one of the document's gold answers."""

  def problem(self, document: dict) -> str:
    if "problem" not in document:
      raise ValueError(f"document {document.get('id')!r} has no 'problem' (question) field; the "
                       "qa_final_answer objective reads QA documents such as tasks.longqa writes")
    return document["problem"]
