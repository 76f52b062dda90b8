"""MEM1-style search episodes run by the sampler, and their turns as GRPO interaction rows.

`search_env.run_search_episodes` is text-level and model-free; `SamplerPolicy` plugs the model in:
each call chat-templates the turn prompts, samples the replies in one batched `Sampler.generate`
and records the exact prompt tokens, completion tokens and their log-probabilities, so that every
turn becomes one training row (MEM1's and MemAgent's multi-conversation scheme) whose π_old is
what was really sampled.

The sampler should stop at the first closing action tag (`STOP_STRINGS`, MEM1's stop strings) and
cap replies at the environment's `max_response_tokens` (its `max_new_tokens`): then the reply the
environment parses is the completion that is trained (up to text after the closing tag inside the
tag's last token, which the environment cuts off).

Row ids: episode e (in the order of the task list) is sample and trajectory e; its group is the
group of its task (the G rollouts of one task form one GRPO group); its turns are steps 0, 1, ...;
the last turn is the FINAL_ANSWER row, earlier turns are MEMORY_UPDATE rows (their <think> block
is the consolidated state the next turn reads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from memtrain_jax.agent import prompts as prompt_lib
from memtrain_jax.agent import search_env
from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.seeding import derive_seed

STOP_STRINGS = ("</search>", "</answer>")
_NO_CAP = 1 << 30


class SamplerPolicy:
  """A `search_env.Policy` backed by `Sampler.generate`, recording every call for training rows."""

  def __init__(self, sampler, params, *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, seed: int = 0,
               system_prompt: str | None = None):
    missing = [s for s in STOP_STRINGS if s not in sampler.config.stop_strings]
    if missing:
      raise ValueError(f"the sampler does not stop at {missing}: build it with "
                       f"SamplerConfig(stop_strings={STOP_STRINGS}) so each reply ends at its "
                       "first action, as the environment parses it")
    if max_new_tokens > sampler.config.max_new_tokens:
      raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the sampler's "
                       f"max_new_tokens={sampler.config.max_new_tokens}")
    self.sampler = sampler
    self.params = params
    self.max_new_tokens = max_new_tokens
    self.sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    self.seed = seed
    self.system_prompt = system_prompt
    # Per call: the prompts' token ids and the SampleBatch of their replies.
    self.calls: list[tuple[list[np.ndarray], object]] = []

  def __call__(self, prompts: list[str]) -> list[str]:
    tok = self.sampler.tokenizer
    ids = [prompt_lib.chat_prompt_tokens(tok, p, self.system_prompt) for p in prompts]
    batch = self.sampler.generate(self.params, ids, max_new_tokens=self.max_new_tokens,
                                  seed=derive_seed(self.seed, len(self.calls)), **self.sampling)
    self.calls.append((ids, batch))
    return [tok.decode(batch.tokens[i].tolist(), skip_special_tokens=True)
            for i in range(len(ids))]


def episode_rows(episodes: Sequence[search_env.Episode], policy: SamplerPolicy,
                 group_ids: Sequence[int]) -> InteractionRows:
  """One row per turn of every episode, from the tokens `policy` recorded while they ran.

  `run_search_episodes` calls the policy once per turn with the prompts of the episodes still
  running, in episode order; call c's i-th reply is therefore turn c of the i-th episode that has
  more than c turns.
  """
  if len(group_ids) != len(episodes):
    raise ValueError(f"{len(group_ids)} group ids for {len(episodes)} episodes")
  fields = {k: [] for k in ("prompt_tokens", "completion_tokens", "completion_logprobs",
                            "sample_id", "group_id", "trajectory_id", "step", "kind",
                            "prompt_text", "completion_text")}
  for turn, (ids, batch) in enumerate(policy.calls):
    running = [e for e, ep in enumerate(episodes) if len(ep.turns) > turn]
    if len(running) != len(ids):
      raise ValueError(f"policy call {turn} answered {len(ids)} prompts but {len(running)} "
                       "episodes have that turn: the episodes were not run by this policy")
    for i, e in enumerate(running):
      last = turn == len(episodes[e].turns) - 1
      values = dict(prompt_tokens=ids[i], completion_tokens=batch.tokens[i],
                    completion_logprobs=batch.logprobs[i], sample_id=e, group_id=group_ids[e],
                    trajectory_id=e, step=turn,
                    kind=int(RowKind.FINAL_ANSWER if last else RowKind.MEMORY_UPDATE),
                    prompt_text=episodes[e].turns[turn].prompt,
                    completion_text=episodes[e].turns[turn].response)
      for key, value in values.items():
        fields[key].append(value)
  rows = InteractionRows(
      prompt_tokens=fields["prompt_tokens"], completion_tokens=fields["completion_tokens"],
      completion_logprobs=fields["completion_logprobs"],
      sample_id=np.asarray(fields["sample_id"], np.int32),
      group_id=np.asarray(fields["group_id"], np.int32),
      trajectory_id=np.asarray(fields["trajectory_id"], np.int32),
      step=np.asarray(fields["step"], np.int32), kind=np.asarray(fields["kind"], np.int8),
      prompt_text=fields["prompt_text"], completion_text=fields["completion_text"])
  rows.validate()
  return rows


def run_search_rollouts(sampler, params, tasks: Sequence[search_env.SearchTask], retriever,
                        config: search_env.SearchEnvConfig, *, num_rollouts: int,
                        temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                        seed: int = 0, system_prompt: str | None = None,
                        ) -> tuple[list[search_env.Episode], InteractionRows]:
  """G = `num_rollouts` episodes per task (task d's episodes are d*G .. d*G+G-1, group d)."""
  if num_rollouts < 1:
    raise ValueError(f"num_rollouts must be >= 1; got {num_rollouts}")
  policy = SamplerPolicy(sampler, params, max_new_tokens=config.max_response_tokens,
                         temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                         system_prompt=system_prompt)
  repeated = [task for task in tasks for _ in range(num_rollouts)]
  # Generation already caps each reply at max_response_tokens sampled tokens (MEM1's
  # max_response_length). The environment's own cap re-encodes the decoded text, which can count
  # differently, and would then parse a reply other than the trained completion: it is lifted.
  env_config = dataclasses.replace(config, max_response_tokens=_NO_CAP)
  episodes = search_env.run_search_episodes(repeated, policy, retriever, env_config,
                                            tokenizer=_TextCodec(sampler.tokenizer))
  groups = np.repeat(np.arange(len(tasks)), num_rollouts)
  return episodes, episode_rows(episodes, policy, groups)


class _TextCodec:
  """The tokenizer as `search_env.TextCodec`: no special tokens added or shown."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)
