"""Search-QA evaluation (paper Table 2): MEM1's multi-objective search episodes, scored by EM.

One cell is one model on one data set: consecutive questions are bundled into tasks of
`questions_per_task` (MEM1: 2), every task runs one episode (all episodes batched turn by turn),
and a task scores EM averaged over its questions (`episode.reward`); the cell's EM is the mean over
tasks. The mean number of searches and turns per episode shows how the agent used its budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from memtrain_jax.agent import search_env, search_rollout
from memtrain_jax.seeding import derive_seed
from memtrain_jax.tasks import searchqa as searchqa_task


def env_config(search_qa: Mapping) -> search_env.SearchEnvConfig:
  return search_env.SearchEnvConfig(
      max_turns=search_qa.max_turns, max_response_tokens=search_qa.max_response_tokens,
      max_obs_tokens=search_qa.max_obs_tokens, topk=search_qa.topk)


def load_tasks(search_qa: Mapping, source: str) -> list[search_env.SearchTask]:
  return searchqa_task.load_tasks(source, questions_per_task=search_qa.questions_per_task,
                                  start=search_qa.question_start, count=search_qa.question_count)


def make_retriever(search_qa: Mapping):
  return searchqa_task.make_retriever(search_qa.retrieval_url, search_qa.corpus)


def episode_record(episode: search_env.Episode) -> dict:
  """A per-task record for inspection: questions, golds, the answer, its EM and the actions."""
  return {"task_id": episode.task.task_id, "questions": list(episode.task.questions),
          "golds": [list(g) for g in episode.task.golds], "answer": episode.answer,
          "em": float(episode.reward), "num_searches": episode.num_searches,
          "num_turns": len(episode.turns),
          "actions": [{"action": t.action, "content": t.content} for t in episode.turns],
          "last_response": episode.turns[-1].response if episode.turns else ""}


def aggregate(records: Sequence[Mapping]) -> dict:
  """Mean EM over tasks (a task's EM is already the mean over its questions), searches, turns."""
  if not records:
    raise ValueError("no per-task records to aggregate")
  return {"em": float(np.mean([r["em"] for r in records])),
          "num_tasks": len(records),
          "searches_mean": float(np.mean([r["num_searches"] for r in records])),
          "turns_mean": float(np.mean([r["num_turns"] for r in records])),
          "answered_fraction": float(np.mean([r["answer"] is not None for r in records]))}


def run_search_cell(sampler, params, tasks: Sequence[search_env.SearchTask], retriever,
                    cfg) -> list[dict]:
  """One episode per task, batched; returns the per-task records."""
  episodes, _ = search_rollout.run_search_rollouts(
      sampler, params, tasks, retriever, env_config(cfg.search_qa), num_rollouts=1,
      temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k,
      seed=derive_seed(cfg.sampling.seed, 4))
  return [episode_record(e) for e in episodes]
