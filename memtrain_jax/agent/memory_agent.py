"""The MemAgent loop over chunked documents, and intermediate memory recall (IMR) probes.

Indices are 0-based. A document has T chunks c_0 .. c_{T-1}.
- Memory-update step t (0 <= t < T) reads chunk c_t with memory m_{t-1} (m_{-1} is
  `initial_memory`) and writes m_t, its whole completion, which overwrites the old memory.
- The final-answer step (step index T, i.e. interaction T of T + 1) sees the problem and m_{T-1}
  only, and answers in \\boxed{}.
- Recall: for each trajectory pick a memory-update step k with 1 <= k <= T-1 and an earlier chunk
  l < k, mask one of c_l's recall candidates as [TARGET] and ask for it from m_k, the memory
  written after reading c_k (the completion of step k). Documents with one chunk get no probe.

All trajectories advance in lockstep, one batched `Sampler.generate` call per step; a document
with fewer chunks drops out of the later steps, and every final answer runs in one call at the
end. Step t's G1 prompts of a document are identical at t = 0, so they share one prefill.

Row ids (see `agent.rows`): trajectory j = document d * G1 + g; its rows have sample_id = j and
group_id = d. A recall probe p (in trajectory order) has group_id = num_documents + p, its G2
samples have sample_id = num_trajectories + p * G2 + s and trajectory_id = the probed trajectory,
so rollout and recall rows can be concatenated without id clashes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from memtrain_jax.agent import prompts as prompt_lib
from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.seeding import derive_seed


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  memory_template: str = prompt_lib.MEMORY_TEMPLATE
  answer_template: str = prompt_lib.ANSWER_TEMPLATE
  recall_template: str = prompt_lib.RECALL_TEMPLATE
  memory_max_tokens: int = 1024  # the memory is the whole update completion, capped here
  answer_max_tokens: int = 256
  recall_max_tokens: int = 256
  initial_memory: str = "No previous memory"
  mask_problem: str = ("Based on the entire article, which entity is represented by the [MASK] "
                       "placeholder?")
  system_prompt: str | None = None  # None: the chat template's own default
  # Prefilled start of the final-answer and recall replies (e.g. "\\boxed{"); '' = none (paper).
  # The answer text that is scored is prefix + completion.
  answer_prefix: str = ""


@dataclasses.dataclass
class AgentDocument:
  doc_id: str
  problem: str
  chunks: list[str]
  answers: list[str]
  recall_candidates: list[list] | None = None  # per chunk: entity strings or {'text': ...} dicts

  @classmethod
  def from_built(cls, doc: dict, problem: str) -> "AgentDocument":
    """From a `data.pipeline.DocumentBuilder.build` dict (problem: `AgentConfig.mask_problem`)."""
    answers = [doc["answer"]] + [a for a in doc.get("answer_aliases", []) if a != doc["answer"]]
    return cls(doc_id=str(doc["id"]), problem=problem, chunks=list(doc["chunks"]), answers=answers,
               recall_candidates=doc.get("recall_candidates"))


@dataclasses.dataclass
class AgentRollout:
  rows: InteractionRows  # memory updates and final answers
  document_index: np.ndarray  # int32 [num_trajectories]
  memories: list[list[str]]  # per trajectory: m_0 .. m_{T-1}
  memory_truncated: list[list[bool]]  # per trajectory and step: hit memory_max_tokens
  final_answers: list[str]  # per trajectory: the answer completion's text
  num_documents: int
  num_rollouts: int

  @property
  def num_trajectories(self) -> int:
    return len(self.document_index)


@dataclasses.dataclass
class RecallRollout:
  rows: InteractionRows
  targets: list[str | None]  # per trajectory: the [TARGET] entity, None when not probed
  answers: list[list[str]]  # per trajectory: the G2 recall completions' texts ([] if not probed)
  step: np.ndarray  # int32 [num_trajectories]: k (memory m_k), -1 when not probed
  chunk_index: np.ndarray  # int32 [num_trajectories]: l < k, -1 when not probed


def _check_budgets(sampler, config: AgentConfig) -> None:
  budget = sampler.config.max_new_tokens
  for name in ("memory_max_tokens", "answer_max_tokens", "recall_max_tokens"):
    if getattr(config, name) > budget:
      raise ValueError(f"AgentConfig.{name}={getattr(config, name)} exceeds the sampler's "
                       f"max_new_tokens={budget}; raise SamplerConfig.max_new_tokens")


class _RowBuilder:
  """Accumulates rows from generate calls."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.fields = {k: [] for k in ("prompt_tokens", "completion_tokens", "completion_logprobs",
                                   "sample_id", "group_id", "trajectory_id", "step", "kind",
                                   "prompt_text", "completion_text")}

  def add(self, prompt_tokens, prompt_text, batch, index, *, sample_id, group_id, trajectory_id,
          step, kind, response_prefix: str = "") -> str:
    text = response_prefix + self.tokenizer.decode(batch.tokens[index].tolist(),
                                                    skip_special_tokens=True)
    text = text.strip()
    values = dict(prompt_tokens=prompt_tokens, completion_tokens=batch.tokens[index],
                  completion_logprobs=batch.logprobs[index], sample_id=sample_id,
                  group_id=group_id, trajectory_id=trajectory_id, step=step, kind=int(kind),
                  prompt_text=prompt_text, completion_text=text)
    for key, value in values.items():
      self.fields[key].append(value)
    return text

  def build(self) -> InteractionRows:
    f = self.fields
    rows = InteractionRows(
        prompt_tokens=f["prompt_tokens"], completion_tokens=f["completion_tokens"],
        completion_logprobs=f["completion_logprobs"],
        sample_id=np.asarray(f["sample_id"], np.int32), group_id=np.asarray(f["group_id"], np.int32),
        trajectory_id=np.asarray(f["trajectory_id"], np.int32),
        step=np.asarray(f["step"], np.int32), kind=np.asarray(f["kind"], np.int8),
        prompt_text=f["prompt_text"], completion_text=f["completion_text"])
    rows.validate()
    return rows


def run_memory_agent(sampler, params, documents: Sequence[AgentDocument], *, num_rollouts: int,
                     config: AgentConfig = AgentConfig(), temperature: float = 1.0,
                     top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> AgentRollout:
  """Runs G1 = `num_rollouts` trajectories per document through every chunk and the answer.

  Greedy evaluation is temperature 0 with num_rollouts 1. The cost is one generate call per chunk
  step plus one for the answers, each over the still-active trajectories.
  """
  _check_budgets(sampler, config)
  if num_rollouts < 1:
    raise ValueError(f"num_rollouts must be >= 1; got {num_rollouts}")
  for doc in documents:
    if not doc.chunks:
      raise ValueError(f"document {doc.doc_id!r} has no chunks")
  tok = sampler.tokenizer
  sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
  num_docs, group = len(documents), num_rollouts
  doc_of = np.repeat(np.arange(num_docs, dtype=np.int32), group)
  num_traj = len(doc_of)
  memory = [config.initial_memory] * num_traj
  memories = [[] for _ in range(num_traj)]
  truncated = [[] for _ in range(num_traj)]
  rows = _RowBuilder(tok)

  def encode(text, prefix=""):
    return prompt_lib.chat_prompt_tokens(tok, text, config.system_prompt, prefix)

  def add_row(prompt_ids, prompt_text, batch, index, traj, step, kind, prefix=""):
    return rows.add(prompt_ids, prompt_text, batch, index, sample_id=traj,
                    group_id=int(doc_of[traj]), trajectory_id=traj, step=step, kind=kind,
                    response_prefix=prefix)

  for t in range(max(len(d.chunks) for d in documents)):
    active = [j for j in range(num_traj) if len(documents[doc_of[j]].chunks) > t]
    texts = [prompt_lib.render(config.memory_template, problem=documents[doc_of[j]].problem,
                               memory=memory[j], chunk=documents[doc_of[j]].chunks[t])
             for j in active]
    if t == 0:
      # Every trajectory of a document starts from the same prompt: prefill it once, sample G1.
      unique = texts[::group]
      ids = [encode(x) for x in unique]
      batch = sampler.generate(params, ids, num_samples=group,
                               max_new_tokens=config.memory_max_tokens,
                               seed=derive_seed(seed, 0, t), **sampling)
      ids = [p for p in ids for _ in range(group)]
    else:
      ids = [encode(x) for x in texts]
      batch = sampler.generate(params, ids, max_new_tokens=config.memory_max_tokens,
                               seed=derive_seed(seed, 0, t), **sampling)
    for i, j in enumerate(active):
      memory[j] = add_row(ids[i], texts[i], batch, i, j, t, RowKind.MEMORY_UPDATE)
      memories[j].append(memory[j])
      truncated[j].append(bool(not batch.stopped[i]
                               and batch.lengths[i] >= config.memory_max_tokens))

  texts = [prompt_lib.render(config.answer_template, problem=documents[doc_of[j]].problem,
                             memory=memory[j]) for j in range(num_traj)]
  ids = [encode(x, config.answer_prefix) for x in texts]
  batch = sampler.generate(params, ids, max_new_tokens=config.answer_max_tokens,
                           seed=derive_seed(seed, 1), **sampling)
  answers = [add_row(ids[j], texts[j], batch, j, j, len(documents[doc_of[j]].chunks),
                     RowKind.FINAL_ANSWER, config.answer_prefix) for j in range(num_traj)]
  return AgentRollout(rows=rows.build(), document_index=doc_of, memories=memories,
                      memory_truncated=truncated, final_answers=answers,
                      num_documents=num_docs, num_rollouts=group)


@dataclasses.dataclass
class ProbeRollout:
  """G2 sampled answers for each probe (see `objectives.Probe`), as recall rows."""
  rows: InteractionRows
  answers: list[list[str]]  # per probe: the G2 completions' texts
  sample_ids: list[list[int]]  # per probe: the sample ids of its G2 rows


def run_probes(sampler, params, probes: Sequence, *, num_samples: int, first_sample_id: int,
               first_group_id: int, config: AgentConfig = AgentConfig(), temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> ProbeRollout:
  """Samples `num_samples` answers for every probe in one generate call (one prefill per probe).

  Probe p's samples form group `first_group_id + p` and get sample ids
  `first_sample_id + p * num_samples + s`; their trajectory id is the probed trajectory's.
  """
  _check_budgets(sampler, config)
  rows = _RowBuilder(sampler.tokenizer)
  answers: list[list[str]] = [[] for _ in probes]
  sample_ids: list[list[int]] = [[] for _ in probes]
  if probes:
    ids = [prompt_lib.chat_prompt_tokens(sampler.tokenizer, probe.prompt, config.system_prompt,
                                         config.answer_prefix) for probe in probes]
    batch = sampler.generate(params, ids, num_samples=num_samples,
                             max_new_tokens=config.recall_max_tokens, temperature=temperature,
                             top_p=top_p, top_k=top_k, seed=derive_seed(seed, 2))
    for p, probe in enumerate(probes):
      for s in range(num_samples):
        r = p * num_samples + s
        sample_ids[p].append(first_sample_id + r)
        answers[p].append(rows.add(
            ids[p], probe.prompt, batch, r, sample_id=first_sample_id + r,
            group_id=first_group_id + p, trajectory_id=probe.trajectory, step=probe.step,
            kind=RowKind.RECALL, response_prefix=config.answer_prefix))
  return ProbeRollout(rows=rows.build(), answers=answers, sample_ids=sample_ids)


def run_memory_recall(sampler, params, documents: Sequence[AgentDocument], rollout: AgentRollout,
                      *, num_samples: int, config: AgentConfig = AgentConfig(),
                      temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      seed: int = 0) -> RecallRollout:
  """One intermediate-memory-recall probe per trajectory of `rollout`, G2 = `num_samples` answers.

  The probes come from the `memory_recall` objective (seeded per trajectory); documents with one
  chunk, or without recall candidates before the probed step, get none.
  """
  from memtrain_jax import objectives  # the objectives build on this module's prompts

  recall = objectives.make("memory_recall", {"template": config.recall_template})
  num_traj = rollout.num_trajectories
  targets: list[str | None] = [None] * num_traj
  step = np.full((num_traj,), -1, np.int32)
  chunk_index = np.full((num_traj,), -1, np.int32)
  probes = []
  for j in range(num_traj):
    doc = documents[rollout.document_index[j]]
    trajectory = objectives.Trajectory(
        document={"chunks": doc.chunks, "recall_candidates": doc.recall_candidates},
        memories=tuple(rollout.memories[j]), final_answer=rollout.final_answers[j])
    probe = recall.build_probe(j, trajectory, np.random.default_rng([seed, j]))
    if probe is not None:
      probes.append(probe)
      step[j], chunk_index[j], targets[j] = probe.step, probe.info["chunk"], probe.answers[0]
  out = run_probes(sampler, params, probes, num_samples=num_samples, first_sample_id=num_traj,
                   first_group_id=rollout.num_documents, config=config, temperature=temperature,
                   top_p=top_p, top_k=top_k, seed=seed)
  answers: list[list[str]] = [[] for _ in range(num_traj)]
  for probe, texts in zip(probes, out.answers):
    answers[probe.trajectory] = texts
  return RecallRollout(rows=out.rows, targets=targets, answers=answers, step=step,
                       chunk_index=chunk_index)
