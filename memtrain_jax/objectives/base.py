"""What a proxy objective is: it builds probe prompts from finished trajectories and scores answers.

Two kinds:
- The trajectory objective (end-to-end masked reconstruction) poses the problem the agent reads
  the whole document for, and scores the agent's final answer.
- Probe objectives (intermediate memory recall, or a new one) look at a finished trajectory (its
  document and the memory after every step), build one prompt for it, and score each of the G2
  answers sampled for that prompt. Their success rate can be coupled into the trajectory's reward
  with a coefficient lambda (paper Eq. 2).

A new objective is one module under `memtrain_jax/objectives/` with a class registered by
`@register("name")`, plus an entry in the config's `objectives.probes` list.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections
import numpy as np

from memtrain_jax import rewards


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A finished end-to-end trajectory, as objectives see it.

  Attributes:
    document: the built document dict (`memtrain_jax.data.pipeline`): 'chunks', 'answer',
      'answer_aliases', 'recall_candidates', ...
    memories: memories[t] is the memory written after reading chunk t (t = 0 .. T-1).
    final_answer: the text of the final-answer step.
  """
  document: dict
  memories: tuple[str, ...]
  final_answer: str


@dataclasses.dataclass(frozen=True)
class Probe:
  """One prompt built from trajectory `trajectory`, answered by G2 samples.

  Attributes:
    trajectory: index of the probed trajectory in the batch.
    prompt: the user-turn text (the chat template is applied by the agent).
    answers: gold answers (aliases); scoring takes the best match.
    step: the memory step the probe reads (for logging and the interaction rows).
    info: anything else worth logging (chunk index, target entity, ...).
  """
  trajectory: int
  prompt: str
  answers: tuple[str, ...]
  step: int
  info: dict = dataclasses.field(default_factory=dict)


class TrajectoryObjective:
  """Poses the end-to-end problem and scores final answers.

  By default the golds are the document's `answer` and `answer_aliases` (every built document,
  masked or QA, has them) and the score is MemAgent's training verifier: strict exact match of
  the last \\boxed{} against any gold. Subclasses pose `problem` and may override the rest.
  """

  name: ClassVar[str] = ""

  def __init__(self, config: ml_collections.ConfigDict | None = None):
    self.config = config

  def problem(self, document: dict) -> str:
    raise NotImplementedError

  def golds(self, document: dict) -> tuple[str, ...]:
    golds = [document["answer"]] + list(document.get("answer_aliases") or [])
    return tuple(dict.fromkeys(g for g in golds if g))

  def score(self, document: dict, completion: str) -> float:
    return float(rewards.training_exact_match(completion, self.golds(document)))


class ProbeObjective:
  """Builds one probe per trajectory (or None when the trajectory offers none) and scores answers."""

  name: ClassVar[str] = ""

  def __init__(self, config: ml_collections.ConfigDict | None = None):
    self.config = config

  def build_probe(self, index: int, trajectory: Trajectory, rng: np.random.Generator) -> Probe | None:
    raise NotImplementedError

  def score(self, probe: Probe, completion: str) -> float:
    raise NotImplementedError

  def describe(self) -> dict[str, Any]:
    return {"name": self.name}
