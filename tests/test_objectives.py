"""The objectives registry, masked reconstruction scoring, and memory-recall probe construction."""

import numpy as np
import pytest

from memtrain_jax import objectives
from memtrain_jax.data.masking import is_visible

DOC = {
    "chunks": ["Ada Lovelace wrote notes in London in 1843.", "Nothing to recall here.",
               "Babbage designed the engine in Cambridge.", "The [MASK] was admired."],
    "answer": "Analytical Engine", "answer_aliases": ["the Analytical Engine"],
    "recall_candidates": [[{"text": "London", "label": "GPE"}, {"text": "1843", "label": "DATE"}],
                          [], [{"text": "Cambridge", "label": "GPE"}], []],
}


def _trajectory(doc=DOC):
  return objectives.Trajectory(document=doc, memories=tuple(f"memory {t}" for t in range(len(doc["chunks"]))),
                               final_answer="")


def test_registry_lists_builtins_and_rejects_unknown():
  assert {"masked_reconstruction", "memory_recall"} <= set(objectives.available())
  with pytest.raises(ValueError, match="unknown objective 'nope'.*registered"):
    objectives.make("nope")


def test_masked_reconstruction_scores_aliases():
  obj = objectives.make("masked_reconstruction")
  assert "[MASK]" in obj.problem(DOC)
  assert obj.score(DOC, "So the answer is \\boxed{The Analytical Engine}") == 1.0
  assert obj.score(DOC, "\\boxed{analytical engine}") == 1.0
  assert obj.score(DOC, "\\boxed{Difference Engine}") == 0.0
  assert obj.score(DOC, "Analytical Engine") == 0.0  # no box, no answer


def test_recall_probe_reads_a_later_memory_than_the_masked_chunk():
  obj = objectives.make("memory_recall")
  seen = set()
  for seed in range(40):
    probe = obj.build_probe(3, _trajectory(), np.random.default_rng(seed))
    chunk, k = probe.info["chunk"], probe.step
    assert chunk < k <= 3 and probe.trajectory == 3
    assert DOC["recall_candidates"][chunk]  # never the chunk without candidates
    assert f"memory {k}" in probe.prompt and "[TARGET]" in probe.prompt
    section = probe.prompt.split("<section>")[1]
    assert not is_visible(section, probe.answers[0])
    seen.add((k, chunk, probe.answers[0]))
  assert len(seen) > 3  # the choice really is random over steps, chunks and targets


def test_recall_probe_is_deterministic_and_scored():
  obj = objectives.make("memory_recall")
  a = obj.build_probe(0, _trajectory(), np.random.default_rng(7))
  b = obj.build_probe(0, _trajectory(), np.random.default_rng(7))
  assert a == b
  assert obj.score(a, f"\\boxed{{{a.answers[0].upper()}}}") == 1.0
  assert obj.score(a, "\\boxed{somewhere else}") == 0.0


def test_no_probe_without_an_earlier_chunk_with_candidates():
  obj = objectives.make("memory_recall")
  one_chunk = dict(DOC, chunks=DOC["chunks"][:1], recall_candidates=DOC["recall_candidates"][:1])
  assert obj.build_probe(0, _trajectory(one_chunk), np.random.default_rng(0)) is None
  empty = dict(DOC, recall_candidates=[[], [], [], []])
  assert obj.build_probe(0, _trajectory(empty), np.random.default_rng(0)) is None


def test_a_new_objective_plugs_in_by_name():
  @objectives.register("test_first_word")
  class FirstWord(objectives.ProbeObjective):
    def build_probe(self, index, trajectory, rng):
      return objectives.Probe(index, f"First word of: {trajectory.memories[0]}",
                              (trajectory.memories[0].split()[0],), step=0)

    def score(self, probe, completion):
      return float(completion.strip() == probe.answers[0])

  obj = objectives.make("test_first_word")
  probe = obj.build_probe(1, _trajectory(), np.random.default_rng(0))
  assert obj.score(probe, "memory") == 1.0
