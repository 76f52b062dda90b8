"""Interaction rows: the one currency between rollouts and training.

Every model call of a memory agent (a memory update, the final answer, a recall probe) is one row:
its own prompt and its own completion. Rows are ragged host-side numpy data; `rl.packing` turns them
into fixed-shape micro-batches.

Ids:
- `sample_id`: the scored unit. All rows of one end-to-end trajectory share its sample id (the
  trajectory's reward and advantage are broadcast to all of them); each recall sample is its own.
- `group_id`: the samples whose rewards are centred together (the G1 trajectories of a document;
  the G2 recall samples that share one recall prompt).
- `trajectory_id`: the end-to-end trajectory a row belongs to, or, for a recall row, the one whose
  memory it probes (used for the lambda-coupled reward).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class RowKind(enum.IntEnum):
  MEMORY_UPDATE = 0
  FINAL_ANSWER = 1
  RECALL = 2


@dataclasses.dataclass
class InteractionRows:
  prompt_tokens: list[np.ndarray]  # int32 [prompt_len] each
  completion_tokens: list[np.ndarray]  # int32 [completion_len] each; the stop token included
  completion_logprobs: list[np.ndarray]  # float32 [completion_len]: log pi_old, temperature 1
  sample_id: np.ndarray  # int32 [rows]
  group_id: np.ndarray  # int32 [rows]
  trajectory_id: np.ndarray  # int32 [rows]
  step: np.ndarray  # int32 [rows]: chunk index for memory updates, T-1 for the answer, k for recall
  kind: np.ndarray  # int8 [rows]: RowKind
  prompt_text: list[str] = dataclasses.field(default_factory=list)
  completion_text: list[str] = dataclasses.field(default_factory=list)
  advantage: np.ndarray | None = None  # float32 [rows], filled by rl.advantages

  def __len__(self) -> int:
    return len(self.prompt_tokens)

  def validate(self) -> None:
    n = len(self.prompt_tokens)
    for name in ("completion_tokens", "completion_logprobs"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"InteractionRows.{name} has {len(getattr(self, name))} rows, expected {n}")
    for name in ("sample_id", "group_id", "trajectory_id", "step", "kind"):
      if np.shape(getattr(self, name)) != (n,):
        raise ValueError(f"InteractionRows.{name} has shape {np.shape(getattr(self, name))}, expected ({n},)")
    for i, (c, lp) in enumerate(zip(self.completion_tokens, self.completion_logprobs)):
      if c.shape != lp.shape:
        raise ValueError(f"row {i}: completion_tokens {c.shape} and completion_logprobs {lp.shape} differ")

  @staticmethod
  def concatenate(parts: list["InteractionRows"]) -> "InteractionRows":
    def cat(name):
      return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros((0,), np.int32)

    def join(name):
      return [x for p in parts for x in getattr(p, name)]

    adv = None
    if parts and all(p.advantage is not None for p in parts):
      adv = cat("advantage")
    return InteractionRows(
        prompt_tokens=join("prompt_tokens"), completion_tokens=join("completion_tokens"),
        completion_logprobs=join("completion_logprobs"), sample_id=cat("sample_id"),
        group_id=cat("group_id"), trajectory_id=cat("trajectory_id"), step=cat("step"),
        kind=cat("kind"), prompt_text=join("prompt_text"), completion_text=join("completion_text"),
        advantage=adv)
