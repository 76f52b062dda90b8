"""Long-text QA evaluation (paper Table 1): RULER-HotpotQA read by the memory agent or in one window.

One cell is one model, one mode and one context length over every selected question:
- memory agent: the context cut into `agent.chunk_size`-token chunks of the model's tokenizer, all
  questions advancing in lockstep (one batched generate call per chunk step, one for the answers);
- full context: one prompt with the whole context, centre-truncated to `full_context_max_tokens`
  tokens (MemAgent's direct-LLM baseline), asking for the answer in \\boxed{}.

Scores are MemAgent's: sub-EM (the headline), EM and F1 of the last boxed answer after SQuAD
normalisation, against the first gold answer (`first_answer_only`, as MemAgent) or any alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from memtrain_jax.agent import memory_agent
from memtrain_jax.agent import prompts as prompt_lib
from memtrain_jax.data.tokens import TokenCounter
from memtrain_jax.evaluation import config as config_lib
from memtrain_jax.seeding import derive_seed
from memtrain_jax.tasks import longqa as longqa_task
from memtrain_jax.tasks import ruler_hotpotqa as rhq

# The article fills the `{chunk}` slot, so `prompts.render` fills it in one safe pass.
FULL_CONTEXT_TEMPLATE = """You are given a problem and an article that may contain the answer. Read the article carefully, answer the problem, and put the final answer in \\boxed{}.

<problem>
{problem}
</problem>

<article>
{chunk}
</article>

Your answer:"""

METRICS = ("sub_em", "em", "f1")


class SampleSource:
  """Builds (and caches) the RULER-HotpotQA samples of every length, the same for every model.

  Token lengths are measured with one tokenizer (the first model's), so every model reads the
  same documents; each model then chunks them in its own tokens.
  """

  def __init__(self, long_qa: Mapping, tokenizer):
    self.cfg = long_qa
    self.counter = TokenCounter(tokenizer)
    self.from_files = config_lib.NUM_DOCS_SLOT in long_qa.source  # MemAgent's ready-made files
    self._questions_and_pool = None
    self._cache: dict[tuple[str, int], list[rhq.RulerSample]] = {}

  def _questions(self) -> tuple[list[rhq.HotpotQuestion], list[str]]:
    if self._questions_and_pool is None:
      cfg = self.cfg
      every = longqa_task.load_questions(cfg.source)
      count = cfg.question_count or len(every) - cfg.question_start
      selected = longqa_task.load_questions(cfg.source, cfg.question_start, count)
      # 'selected' keeps evaluation distractors out of the training questions' paragraphs.
      pool = rhq.build_document_pool(selected if cfg.distractor_pool == "selected" else every)
      self._questions_and_pool = selected, pool
    return self._questions_and_pool

  def _from_memagent_file(self, num_docs: int) -> list[rhq.RulerSample]:
    path = self.cfg.source.replace(config_lib.NUM_DOCS_SLOT, str(num_docs))
    samples = (rhq.load_memagent_parquet(path) if path.endswith(".parquet")
               else rhq.load_memagent_eval(path))
    start = self.cfg.question_start
    end = start + self.cfg.question_count if self.cfg.question_count else len(samples)
    if end > len(samples) or start >= end:
      raise ValueError(f"long_qa: questions {start}..{end} requested but {path} has "
                       f"{len(samples)}")
    return samples[start:end]

  def samples(self, kind: str, value: int) -> list[rhq.RulerSample]:
    """The samples of one column: `kind` 'tokens' (target length) or 'num_docs'."""
    key = (kind, value)
    if key not in self._cache:
      if self.from_files:
        self._cache[key] = self._from_memagent_file(value)
      elif kind == "tokens":
        questions, pool = self._questions()
        self._cache[key] = rhq.build_ruler_hotpotqa_for_tokens(
            questions, value, self.counter, seed=self.cfg.seed,
            tolerance=self.cfg.length_tolerance, pool=pool)
      else:
        questions, pool = self._questions()
        self._cache[key] = rhq.build_ruler_hotpotqa(questions, value, seed=self.cfg.seed,
                                                    pool=pool)
    return self._cache[key]

  def question_index(self, sample: rhq.RulerSample) -> int:
    """The sample's position in its source file."""
    return sample.index if self.from_files else self.cfg.question_start + sample.index


def _golds(sample: rhq.RulerSample, first_answer_only: bool) -> list[str]:
  answers = [a for a in sample.answers if a]
  return answers[:1] if first_answer_only else answers


def score_records(samples: Sequence[rhq.RulerSample], completions: Sequence[str],
                  first_answer_only: bool, question_index=lambda s: s.index) -> list[dict]:
  """One record per question: its completion, boxed prediction and sub-EM / EM / F1."""
  records = []
  for sample, completion in zip(samples, completions, strict=True):
    scores = longqa_task.score_answer(completion, _golds(sample, first_answer_only))
    records.append({"question_index": question_index(sample), "question": sample.question,
                    "answers": list(sample.answers), "prediction": scores.prediction,
                    "completion": completion, "sub_em": scores.sub_em, "em": scores.em,
                    "f1": scores.f1, "num_docs": sample.num_docs})
  return records


def aggregate(records: Sequence[Mapping]) -> dict:
  """Mean sub-EM, EM and F1 (fractions), the count, and the share of answers with a box."""
  if not records:
    raise ValueError("no per-question records to aggregate")
  out = {m: float(np.mean([r[m] for r in records])) for m in METRICS}
  out["num_questions"] = len(records)
  out["boxed_fraction"] = float(np.mean([r["prediction"] is not None for r in records]))
  if all("context_tokens" in r for r in records):
    out["context_tokens_mean"] = float(np.mean([r["context_tokens"] for r in records]))
  return out


def _sampling(sampling: Mapping) -> dict:
  return dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)


def agent_config(agent: Mapping) -> memory_agent.AgentConfig:
  return memory_agent.AgentConfig(
      memory_max_tokens=agent.memory_max_tokens, answer_max_tokens=agent.answer_max_tokens,
      # No recall probes at evaluation; the budget only has to fit the sampler.
      recall_max_tokens=min(agent.memory_max_tokens, agent.answer_max_tokens),
      initial_memory=agent.initial_memory, answer_prefix=agent.answer_prefix)


def run_memory_agent_cell(sampler, params, samples: Sequence[rhq.RulerSample], cfg,
                          question_index=lambda s: s.index) -> list[dict]:
  """The memory agent over every sample at once; returns the per-question records."""
  counter = TokenCounter(sampler.tokenizer)
  built = longqa_task.build_documents(samples, counter, cfg.agent.chunk_size)
  docs = [memory_agent.AgentDocument.from_built(d, d["problem"]) for d in built]
  rollout = memory_agent.run_memory_agent(
      sampler, params, docs, num_rollouts=1, config=agent_config(cfg.agent),
      seed=derive_seed(cfg.sampling.seed, 0), **_sampling(cfg.sampling))
  records = score_records(samples, rollout.final_answers, cfg.long_qa.first_answer_only,
                          question_index)
  for i, (record, doc) in enumerate(zip(records, built)):
    record["context_tokens"] = counter.count(samples[i].context)
    record["num_chunks"] = len(doc["chunks"])
    record["final_memory"] = rollout.memories[i][-1]
    record["memory_truncated_steps"] = int(sum(rollout.memory_truncated[i]))
  return records


def full_context_prompt(sample: rhq.RulerSample, counter: TokenCounter, max_tokens: int,
                        template: str) -> tuple[str, int, bool]:
  """(prompt text, context tokens, truncated?) with the context centre-truncated to max_tokens."""
  ids = counter.encode(sample.context)
  kept = longqa_task.centre_truncate(ids, max_tokens)
  article = sample.context if len(kept) == len(ids) else counter.decode(kept)
  text = prompt_lib.render(template, problem=sample.question, chunk=article)
  return text, len(ids), len(kept) < len(ids)


def run_full_context_cell(sampler, params, samples: Sequence[rhq.RulerSample], cfg,
                          question_index=lambda s: s.index) -> list[dict]:
  """One whole-context prompt per sample, `full_context_batch_size` prompts per generate call
  (0 = all in one); returns the per-question records."""
  counter = TokenCounter(sampler.tokenizer)
  template = cfg.long_qa.full_context_template or FULL_CONTEXT_TEMPLATE
  prefix = cfg.agent.answer_prefix
  prompts, lengths, truncated = [], [], []
  for sample in samples:
    text, n, cut = full_context_prompt(sample, counter, cfg.long_qa.full_context_max_tokens,
                                       template)
    prompts.append(prompt_lib.chat_prompt_tokens(sampler.tokenizer, text, None, prefix))
    lengths.append(n)
    truncated.append(cut)
  size = cfg.long_qa.full_context_batch_size or len(prompts)
  completions = []
  for start in range(0, len(prompts), size):
    batch = sampler.generate(params, prompts[start:start + size],
                             max_new_tokens=cfg.agent.answer_max_tokens,
                             seed=derive_seed(cfg.sampling.seed, 3, start),
                             **_sampling(cfg.sampling))
    # The prefilled prefix is part of the answer, as in the memory agent's final answers.
    completions += [(prefix + sampler.tokenizer.decode(tokens.tolist(),
                                                       skip_special_tokens=True)).strip()
                    for tokens in batch.tokens]
  records = score_records(samples, completions, cfg.long_qa.first_answer_only, question_index)
  for record, n, cut, ids in zip(records, lengths, truncated, prompts):
    record["context_tokens"] = n
    record["context_truncated"] = cut
    record["prompt_tokens"] = int(len(ids))
  return records
