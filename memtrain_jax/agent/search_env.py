"""MEM1-style search agent environment, at the text level and independent of any model.

Each turn the policy gets a fresh prompt: the instruction with the task's questions, then only its
previous reply and what that reply brought back (anchors Part B §3.3; MEM1 `generation_think.py`
keeps the prompt, the last response and the last observation, as does MemTrain's
`search_agent.py`). The `<think>` block of that reply is the agent's consolidated state, its
only memory of earlier turns, so the context stays bounded however many turns pass.

A reply acts with `<search>query</search>` (the passages come back as Search-R1 "Doc i(Title: ..)"
lines inside `<information>`, under a turns-left hint) or `<answer>a1; a2</answer>`; anything else
gets a corrective observation. An episode ends at an answer, or after `max_turns` replies. Replies
are cut at their first closing action tag (MEM1's stop strings) and capped at
`max_response_tokens`; the retrieved text is capped at `max_obs_tokens`. The reward is EM averaged
over the task's questions (`rewards.multi_answer_exact_match`), given at the end of the episode.

Every turn is recorded with its own prompt and reply: each becomes one training row, sharing the
episode's reward, as in the multi-conversation scheme of MemAgent and MemTrain.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from memtrain_jax import rewards
from memtrain_jax.retrieval.passage import Passage, format_passages

# The first complete action tag decides; MEM1 stops generation there, so later text never exists.
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ACTION_END = re.compile(r"</(?:search|answer)>")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)

SEARCH, ANSWER, INVALID = "search", "answer", "invalid"


class TextCodec(Protocol):
  """A tokenizer's text round trip; `encode` should add no special tokens."""

  def encode(self, text: str) -> Sequence[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class Retriever(Protocol):
  """`RetrievalClient` (HTTP) or `BM25Retriever` (in process)."""

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
    ...


Policy = Callable[[list[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class SearchTask:
  questions: tuple[str, ...]
  golds: tuple[tuple[str, ...], ...]  # the gold aliases of each question, in question order
  task_id: str | None = None

  def __post_init__(self):
    if not self.questions or len(self.questions) != len(self.golds):
      raise ValueError(f"a SearchTask needs one gold list per question; got "
                       f"{len(self.questions)} questions and {len(self.golds)} gold lists")


def bundle_tasks(questions: Sequence[str], golds: Sequence[Sequence[str]],
                 per_task: int = 2) -> list[SearchTask]:
  """Groups consecutive questions into multi-objective tasks (MEM1 trains with 2 per prompt).

  A remainder smaller than `per_task` is dropped so every task has the same number of questions.
  """
  if len(questions) != len(golds):
    raise ValueError(f"{len(questions)} questions but {len(golds)} gold lists")
  return [
      SearchTask(questions=tuple(questions[i:i + per_task]),
                 golds=tuple(tuple(g) for g in golds[i:i + per_task]))
      for i in range(0, len(questions) - per_task + 1, per_task)
  ]


@dataclasses.dataclass(frozen=True)
class SearchPrompts:
  """The agent's texts. Structure after MEM1's multi-objective prompt; wording our own."""

  instruction: str = (
      "Answer the questions below by reasoning step by step and searching a knowledge source.\n"
      "\n"
      "Each turn you see the questions, your previous reply and, if that reply searched, the "
      "passages it returned. Earlier turns are not shown again. In every reply:\n"
      "1. Inside <think> </think>, reason about what you know and rewrite your notes: a concise "
      "running summary of every useful fact found so far, including answers already settled. "
      "These notes are your only memory of earlier turns, so carry forward everything that "
      "matters from your previous notes and the new passages.\n"
      "2. Then take exactly one action:\n"
      "   - to look up one missing fact, write a short keyword query inside <search> </search>; "
      "the results will appear inside <information> </information>. Search for one question at "
      "a time.\n"
      "   - once every question is answered, give the answers in question order, separated by "
      "semicolons, inside <answer> </answer>, e.g. <answer> answer 1; answer 2 </answer>. Keep "
      "each answer to its essential words, with no explanation.\n"
      "\n"
      "{questions}\n")
  question_line: str = "Question {number}: {question}"
  information: str = "\n\n<information>{hint}\n\n{passages}</information>\n\n"
  no_results: str = "The search returned no passages; try other keywords.\n"
  turns_left_hint: str = "[HINT]You have {turns_left} turns left.[/HINT]"
  last_turn_hint: str = "[HINT]You have 1 turn left: you must give your answers next turn.[/HINT]"
  invalid_action: str = (
      "\n\n{hint}\nYour reply did not contain a valid action. To search, put a non-empty query "
      "between <search> and </search>; to finish, put your answers between <answer> and "
      "</answer>, separated by semicolons.\n\n")

  def task_prompt(self, task: SearchTask) -> str:
    lines = [self.question_line.format(number=i + 1, question=q)
             for i, q in enumerate(task.questions)]
    return self.instruction.format(questions="\n".join(lines))

  def hint(self, turns_left: int) -> str:
    if turns_left > 1:
      return self.turns_left_hint.format(turns_left=turns_left)
    return self.last_turn_hint


@dataclasses.dataclass(frozen=True)
class SearchEnvConfig:
  max_turns: int = 6  # MemTrain §4.3: at most 6 turns
  max_response_tokens: int = 1000  # MEM1 max_response_length (the paper's "1k")
  max_obs_tokens: int = 1000  # MEM1 max_obs_length
  topk: int = 3  # MEM1 / Search-R1 retriever.topk
  prompts: SearchPrompts = dataclasses.field(default_factory=SearchPrompts)


@dataclasses.dataclass(frozen=True)
class Turn:
  prompt: str
  response: str  # the reply as kept: truncated and cut after its first action tag
  action: str  # SEARCH, ANSWER or INVALID
  content: str  # the query or the answer text; "" when invalid
  observation: str  # what the environment appended for the next turn; "" when the episode ended
  internal_state: str | None  # the reply's last <think> block, None without one


@dataclasses.dataclass
class Episode:
  task: SearchTask
  turns: list[Turn]
  answer: str | None  # the final <answer> content, None if the agent never answered
  reward: float

  @property
  def num_searches(self) -> int:
    return sum(t.action == SEARCH for t in self.turns)


def truncate_tokens(text: str, max_tokens: int, tokenizer: TextCodec) -> str:
  ids = tokenizer.encode(text)
  return text if len(ids) <= max_tokens else tokenizer.decode(list(ids)[:max_tokens])


def cut_after_first_action(response: str) -> str:
  match = _ACTION_END.search(response)
  return response if match is None else response[:match.end()]


def parse_action(response: str) -> tuple[str, str]:
  """(SEARCH | ANSWER, content) for the first complete action tag, else (INVALID, "")."""
  match = _ACTION.search(response)
  if match is None or (match.group(1) == SEARCH and not match.group(2).strip()):
    return INVALID, ""
  return match.group(1), match.group(2).strip()


def parse_internal_state(response: str) -> str | None:
  states = _THINK.findall(response)
  return states[-1].strip() if states else None


def _information(passages: list[Passage], turns_left: int, config: SearchEnvConfig,
                 tokenizer: TextCodec) -> str:
  prompts = config.prompts
  text = format_passages(passages) if passages else prompts.no_results
  # Capping only the retrieved text, not the tags and hint, keeps the block well formed.
  text = truncate_tokens(text, config.max_obs_tokens, tokenizer)
  return prompts.information.format(hint=prompts.hint(turns_left), passages=text)


class _EpisodeState:

  def __init__(self, task: SearchTask, prompts: SearchPrompts):
    self.task = task
    self.task_prompt = prompts.task_prompt(task)
    self.carried = ""  # the previous reply and its observation
    self.turns: list[Turn] = []
    self.answer: str | None = None
    self.done = False

  def prompt(self) -> str:
    return self.task_prompt + self.carried


def _call_policy(policy: Policy, prompts: list[str]) -> list[str]:
  responses = policy(prompts)
  if len(responses) != len(prompts) or not all(isinstance(r, str) for r in responses):
    raise ValueError(f"the policy must return one string per prompt: got {len(responses)} "
                     f"replies for {len(prompts)} prompts")
  return list(responses)


def run_search_episodes(tasks: Sequence[SearchTask], policy: Policy, retriever: Retriever,
                        config: SearchEnvConfig, *, tokenizer: TextCodec) -> list[Episode]:
  """Runs every task to the end, batching the policy and the retriever across tasks per turn."""
  if config.max_turns < 1:
    raise ValueError(f"max_turns must be >= 1, got {config.max_turns}")
  states = [_EpisodeState(task, config.prompts) for task in tasks]
  for turn_index in range(config.max_turns):
    active = [s for s in states if not s.done]
    if not active:
      break
    prompts = [s.prompt() for s in active]
    replies = _call_policy(policy, prompts)
    turns_left = config.max_turns - turn_index - 1
    parsed = []
    for reply in replies:
      reply = cut_after_first_action(truncate_tokens(reply, config.max_response_tokens, tokenizer))
      parsed.append((reply, *parse_action(reply)))
    # A search on the last turn cannot be followed by an answer, so it is not run.
    queries = [content for _, action, content in parsed if action == SEARCH and turns_left > 0]
    passages = retriever.retrieve(queries, config.topk) if queries else []
    if len(passages) != len(queries):
      raise ValueError(f"the retriever returned {len(passages)} result lists for "
                       f"{len(queries)} queries")
    results = iter(passages)
    for state, prompt, (reply, action, content) in zip(active, prompts, parsed):
      observation = ""
      if action == ANSWER:
        state.answer, state.done = content, True
      elif turns_left == 0:
        state.done = True
      elif action == SEARCH:
        observation = _information(next(results), turns_left, config, tokenizer)
      else:
        observation = config.prompts.invalid_action.format(hint=config.prompts.hint(turns_left))
      state.carried = reply + observation
      state.turns.append(Turn(prompt=prompt, response=reply, action=action, content=content,
                              observation=observation,
                              internal_state=parse_internal_state(reply)))
  return [
      Episode(task=s.task, turns=s.turns, answer=s.answer,
              reward=rewards.multi_answer_exact_match(s.answer, s.task.golds))
      for s in states
  ]
