"""Prompt templates of the memory agent and their rendering into chat-templated token ids.

The defaults follow the paper's three templates (Appendix A) in MemAgent's layout: one user
turn, each tag on its own line, the memory update ending with the cue "Updated memory:" and the
answers with "Your answer:". The final-answer prompt has no section slot: the answer comes from
the memory alone (paper_spec.md section 1). The wording is this project's own.

Slots are written `{problem}`, `{memory}` and `{chunk}`; every other brace is literal text, so
`\\boxed{}` needs no escaping.
"""

from __future__ import annotations

import re

import numpy as np

MEMORY_TEMPLATE = """You are given a problem, one section of an article that may help to solve it, and a memory of the sections read before. Read the section carefully and rewrite the memory: keep every relevant detail of the previous memory and add the new information from the section that helps to answer the problem.

<problem>
{problem}
</problem>

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Updated memory:"""

ANSWER_TEMPLATE = """You are given a problem and a memory of an article. Answer the problem using the memory alone, and put the final answer in \\boxed{}.

<problem>
{problem}
</problem>

<memory>
{memory}
</memory>

Your answer:"""

RECALL_TEMPLATE = """You are given a memory of the sections read so far and a section in which one entity is replaced by the placeholder [TARGET]. Using the memory, work out which entity [TARGET] stands for, and put it in \\boxed{}.

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Your answer:"""

_SLOT = re.compile(r"\{(problem|memory|chunk)\}")


def render(template: str, **values: str) -> str:
  """Fills the template's slots in one pass (a value that contains "{chunk}" stays as it is)."""
  used = set(_SLOT.findall(template))
  missing = used - set(values)
  if missing:
    raise ValueError(f"no value for template slot(s) {sorted(missing)}")
  unused = set(values) - used
  if unused:
    raise ValueError(f"template has no slot for {sorted(unused)}; slots are {sorted(used)}")
  return _SLOT.sub(lambda m: values[m.group(1)], template)


def chat_prompt_tokens(tokenizer, text: str, system_prompt: str | None = None,
                       response_prefix: str = "") -> np.ndarray:
  """int32 token ids of one user turn in the tokenizer's chat template, ready for the reply.

  `response_prefix` is written at the start of the assistant's reply (prefilled, part of the
  prompt): e.g. "\\boxed{" makes a small model answer in the format the reward reads.
  """
  messages = [{"role": "user", "content": text}]
  if system_prompt is not None:
    messages.insert(0, {"role": "system", "content": system_prompt})
  ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
    ids = ids["input_ids"]
  ids = list(ids)
  if response_prefix:
    ids += tokenizer.encode(response_prefix, add_special_tokens=False)
  return np.asarray(ids, np.int32)
