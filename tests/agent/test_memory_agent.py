"""The memory-agent loop and recall probes with a tiny random decoder and the SmolLM2 tokenizer."""

import numpy as np
import pytest

from memtrain_jax import models
from memtrain_jax.agent import prompts as prompt_lib
from memtrain_jax import objectives
from memtrain_jax.agent.memory_agent import (AgentConfig, AgentDocument, run_memory_agent,
                                             run_memory_recall)
from memtrain_jax.agent.rows import RowKind
from memtrain_jax.sampling import Sampler, SamplerConfig
from tests.rollout_fixtures import tiny_config, tiny_params

AGENT = AgentConfig(memory_max_tokens=6, answer_max_tokens=5, recall_max_tokens=4)


@pytest.fixture(scope="module")
def setup(bundled_model_path):
  tokenizer = models.load_tokenizer(bundled_model_path)
  config = tiny_config(vocab_size=len(tokenizer))
  params = tiny_params(config, scale=0.05)
  sampler = Sampler(config, tokenizer, SamplerConfig(prompt_buckets=(256, 384),
                                                     batch_buckets=(4, 8, 16), max_new_tokens=8))
  return sampler, params


def _documents():
  def doc(name, n):
    chunks = [f"Part {i} of {name}. The [MASK] met Alice Hart in Lyon in {1900 + i}." for i in range(n)]
    cands = [[{"text": "Alice Hart", "label": "PERSON"}, "Lyon"] for _ in range(n)]
    return AgentDocument(doc_id=name, problem=AGENT.mask_problem, chunks=chunks,
                         answers=["Bob"], recall_candidates=cands)
  return [doc("one", 1), doc("three", 3), doc("two", 2)]


def test_rollout_rows_follow_the_loop(setup):
  sampler, params = setup
  docs = _documents()
  g1 = 2
  out = run_memory_agent(sampler, params, docs, num_rollouts=g1, config=AGENT, seed=0)
  rows = out.rows
  rows.validate()
  chunks = [len(d.chunks) for d in docs]
  assert len(rows) == g1 * (sum(chunks) + len(docs))
  np.testing.assert_array_equal(out.document_index, [0, 0, 1, 1, 2, 2])
  for j in range(out.num_trajectories):
    d = out.document_index[j]
    mine = np.flatnonzero(rows.trajectory_id == j)
    assert (rows.sample_id[mine] == j).all() and (rows.group_id[mine] == d).all()
    steps, kinds = rows.step[mine], rows.kind[mine]
    np.testing.assert_array_equal(steps, list(range(chunks[d])) + [chunks[d]])
    assert (kinds[:-1] == RowKind.MEMORY_UPDATE).all() and kinds[-1] == RowKind.FINAL_ANSWER
    assert len(out.memories[j]) == chunks[d]
    for t, r in enumerate(mine[:-1]):
      text = rows.prompt_text[r]
      previous = AGENT.initial_memory if t == 0 else out.memories[j][t - 1]
      assert f"<memory>\n{previous}\n</memory>" in text
      assert docs[d].chunks[t] in text and text.rstrip().endswith("Updated memory:")
      assert rows.completion_text[r] == out.memories[j][t]  # the completion is the memory
      # Memory capped at the budget; a capped memory is flagged.
      n = len(rows.completion_tokens[r])
      assert 1 <= n <= AGENT.memory_max_tokens
      assert out.memory_truncated[j][t] == (n == AGENT.memory_max_tokens
                                            and rows.completion_tokens[r][-1] != 2)
    final = rows.prompt_text[mine[-1]]
    assert "<section>" not in final and out.memories[j][-1] in final and "Your answer:" in final
    assert rows.completion_text[mine[-1]] == out.final_answers[j]
    assert len(rows.completion_tokens[mine[-1]]) <= AGENT.answer_max_tokens
    # Prompt tokens are the chat-templated prompt text.
    np.testing.assert_array_equal(
        rows.prompt_tokens[mine[0]],
        prompt_lib.chat_prompt_tokens(sampler.tokenizer, rows.prompt_text[mine[0]]))
  assert any(any(flags) for flags in out.memory_truncated)  # a random model rarely stops early


def test_rollouts_are_deterministic_under_a_seed(setup):
  sampler, params = setup
  docs = _documents()[1:]
  a = run_memory_agent(sampler, params, docs, num_rollouts=2, config=AGENT, seed=3)
  b = run_memory_agent(sampler, params, docs, num_rollouts=2, config=AGENT, seed=3)
  c = run_memory_agent(sampler, params, docs, num_rollouts=2, config=AGENT, seed=4)
  assert a.memories == b.memories and a.final_answers == b.final_answers
  for x, y in zip(a.rows.completion_tokens, b.rows.completion_tokens):
    np.testing.assert_array_equal(x, y)
  assert a.memories != c.memories
  ra = run_memory_recall(sampler, params, docs, a, num_samples=2, config=AGENT, seed=1)
  rb = run_memory_recall(sampler, params, docs, b, num_samples=2, config=AGENT, seed=1)
  assert ra.targets == rb.targets and ra.answers == rb.answers
  np.testing.assert_array_equal(ra.step, rb.step)


def test_recall_rows_probe_an_earlier_chunk(setup):
  sampler, params = setup
  docs = _documents()
  g1, g2 = 2, 3
  rollout = run_memory_agent(sampler, params, docs, num_rollouts=g1, config=AGENT, seed=0)
  recall = run_memory_recall(sampler, params, docs, rollout, num_samples=g2, config=AGENT, seed=0)
  rows = recall.rows
  rows.validate()
  probed = [j for j in range(rollout.num_trajectories) if recall.targets[j] is not None]
  # The one-chunk document's trajectories (0, 1) get no probe; the others do.
  assert probed == [2, 3, 4, 5]
  assert recall.step[0] == recall.chunk_index[0] == -1 and recall.answers[0] == []
  assert len(rows) == len(probed) * g2
  assert (rows.kind == RowKind.RECALL).all()
  for p, j in enumerate(probed):
    k, l = int(recall.step[j]), int(recall.chunk_index[j])
    doc = docs[rollout.document_index[j]]
    assert 0 <= l < k < len(doc.chunks)
    mine = np.flatnonzero(rows.trajectory_id == j)
    assert len(mine) == g2 and len(recall.answers[j]) == g2
    assert (rows.step[mine] == k).all()
    assert (rows.group_id[mine] == rollout.num_documents + p).all()
    assert len(set(rows.sample_id[mine])) == g2
    assert (rows.sample_id[mine] >= rollout.num_trajectories).all()
    text = rows.prompt_text[mine[0]]
    assert f"<memory>\n{rollout.memories[j][k]}\n</memory>" in text  # m_k: written after chunk k
    assert "[TARGET]" in text and recall.targets[j] in ("Alice Hart", "Lyon")
    assert recall.targets[j] not in text.split("<section>")[1]  # every occurrence masked
    assert f"Part {l} of" in text
    for r in mine:
      assert len(rows.completion_tokens[r]) <= AGENT.recall_max_tokens


def _probe(chunks, candidates, seed):
  trajectory = objectives.Trajectory(document={"chunks": chunks, "recall_candidates": candidates},
                                     memories=tuple(f"m{i}" for i in range(len(chunks))),
                                     final_answer="")
  return objectives.make("memory_recall").build_probe(0, trajectory, np.random.default_rng(seed))


def test_probe_choice_covers_only_valid_pairs():
  chunks = [f"c{i} Paris" for i in range(4)]
  seen = set()
  for seed in range(40):
    probe = _probe(chunks, [[], ["Paris"], [], []], seed)
    assert probe.info["chunk"] == 1 and probe.step in (2, 3) and probe.answers == ("Paris",)
    assert "<section>\nc1 [TARGET]\n</section>" in probe.prompt
    seen.add(probe.step)
  assert seen == {2, 3}
  assert _probe(["a Paris"], [["Paris"]], 0) is None
  assert _probe(["a", "b"], None, 0) is None
  # A candidate that does not occur in its chunk is skipped for one that does.
  probe = _probe(["x Lyon", "y"], [["Rome", "Lyon"], []], 0)
  assert probe.answers == ("Lyon",)


def test_templates_render_in_one_pass():
  text = prompt_lib.render(AgentConfig().memory_template, problem="P?", memory="{chunk}",
                           chunk="C")
  assert "<memory>\n{chunk}\n</memory>" in text and "<section>\nC\n</section>" in text
  assert "\\boxed{}" in prompt_lib.render(AgentConfig().answer_template, problem="P", memory="M")
  with pytest.raises(ValueError, match="no slot"):
    prompt_lib.render(AgentConfig().answer_template, problem="P", memory="M", chunk="C")
  with pytest.raises(ValueError, match="no value"):
    prompt_lib.render(AgentConfig().recall_template, memory="M")


def test_budget_larger_than_the_sampler_is_refused(setup):
  sampler, params = setup
  with pytest.raises(ValueError, match="max_new_tokens"):
    run_memory_agent(sampler, params, _documents(), num_rollouts=1,
                     config=AgentConfig(memory_max_tokens=9))
