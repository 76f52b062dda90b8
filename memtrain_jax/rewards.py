"""Answer extraction and scoring: the training reward and the evaluation metrics.

Two normalisations coexist on purpose (anchors Part B §1.5):
- Training reward (MemAgent `hotpotqa.py`): the last `\\boxed{...}` within the last 300 characters,
  lower-cased, then a MATH-style `strip_string` that deletes every space, and exact string equality
  with any gold alias. Strict: "the eiffel tower" and "eiffel tower" differ.
- Evaluation (MemAgent `ruler_hqa.py`, MEM1 `qa_multiple.py`): SQuAD `normalize_answer` (lower-case,
  drop punctuation and the articles a/an/the, collapse whitespace), scored as EM, sub-EM
  (containment either way) and token F1. With several gold aliases every metric takes the max.

Multi-objective answers (MEM1) are separated by ';' and scored per sub-question, then averaged.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

# The paper's prompts say "boxed{}" without the backslash and models copy either form, so the
# backslash is optional; `\fbox` is the MATH-harness alias of `\boxed`.
_BOX_OPENER = re.compile(r"\\?(?:boxed|fbox)\s*\{")
TRAINING_ANSWER_WINDOW_CHARS = 300
MULTI_ANSWER_SEPARATOR = ";"
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# HotpotQA's official F1 gives no partial credit when either side is one of these.
_F1_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})

Golds = str | Sequence[str]


def _as_aliases(golds: Golds) -> list[str]:
  return [golds] if isinstance(golds, str) else list(golds)


def extract_boxed(text: str) -> str | None:
  """Returns the content of the last `\\boxed{...}` in `text`, braces balanced, or None.

  Accepts `\\boxed{..}`, `\\boxed {..}`, `boxed{..}` and `\\fbox{..}`. A box whose closing brace is
  missing does not count as an answer, so an earlier complete box is not used in its place either:
  the model's last word is its answer.
  """
  openers = list(_BOX_OPENER.finditer(text))
  if not openers:
    return None
  start = openers[-1].end()
  depth = 1
  for i in range(start, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return text[start:i]
  return None


def strip_string(text: str) -> str:
  """MATH-style string normalisation as MemAgent's training verifier applies it.

  Removes LaTeX spacing and sizing commands, degree signs, escaped dollars and percent signs, pads
  bare decimals with a leading zero and finally deletes all whitespace. MemAgent deletes only ' '
  and '\\n'; deleting every whitespace character (tabs, no-break spaces) is a superset that keeps
  "New\\u00a0York" equal to "new york".
  """
  text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
  text = text.replace("tfrac", "frac").replace("dfrac", "frac")
  text = text.replace("\\left", "").replace("\\right", "")
  text = text.replace("^{\\circ}", "").replace("^\\circ", "")
  text = text.replace("\\$", "").replace("\\%", "").replace("%", "")
  text = text.replace(" .", " 0.").replace("{.", "{0.")
  return "".join(text.split())


def training_exact_match(response: str, golds: Golds) -> float:
  """MemAgent's training reward: 1.0 if the last boxed answer equals a gold alias, else 0.0.

  Only the last 300 characters are searched, so a box the model wrote early and then kept talking
  past does not count; both sides are lower-cased and `strip_string`-normalised.
  """
  answer = extract_boxed(response[-TRAINING_ANSWER_WINDOW_CHARS:].lower())
  if answer is None:
    return 0.0
  normalised = strip_string(answer)
  return float(any(normalised == strip_string(g.lower()) for g in _as_aliases(golds)))


def normalize_answer(text: str) -> str:
  """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, golds: Golds) -> float:
  if prediction is None:
    return 0.0
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(g) for g in _as_aliases(golds)))


def sub_exact_match(prediction: str | None, golds: Golds) -> float:
  """1.0 if the normalised gold is inside the prediction or the prediction inside the gold.

  An empty normalised prediction (e.g. "the.") would be inside every gold; it scores 0.
  """
  if prediction is None:
    return 0.0
  pred = normalize_answer(prediction)
  if not pred:
    return 0.0
  for gold in _as_aliases(golds):
    gold = normalize_answer(gold)
    if gold and (gold in pred or pred in gold):
      return 1.0
  return 0.0


def _f1_single(prediction: str, gold: str) -> float:
  pred, gold = normalize_answer(prediction), normalize_answer(gold)
  if (pred in _F1_EXACT_ONLY or gold in _F1_EXACT_ONLY) and pred != gold:
    return 0.0
  pred_tokens, gold_tokens = pred.split(), gold.split()
  overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(pred_tokens)
  recall = overlap / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golds: Golds) -> float:
  if prediction is None:
    return 0.0
  return max((_f1_single(prediction, g) for g in _as_aliases(golds)), default=0.0)


def split_multi_answer(answer: str) -> list[str]:
  return [part.strip() for part in answer.split(MULTI_ANSWER_SEPARATOR)]


def multi_answer_exact_match(answer: str | None, golds_per_question: Sequence[Golds]) -> float:
  """MEM1's multi-objective EM, averaged: the i-th ';'-separated answer is scored against the
  i-th question's aliases; missing answers score 0 and surplus answers are ignored.

  MEM1 sums the per-question EMs; dividing by the number of questions keeps the reward in [0, 1]
  whatever the number of objectives, which is the paper's "EM averaged across the two objectives".
  """
  if not golds_per_question:
    raise ValueError("multi_answer_exact_match needs at least one question's gold answers")
  if answer is None:
    return 0.0
  parts = split_multi_answer(answer)
  hits = sum(exact_match(part, golds) for part, golds in zip(parts, golds_per_question))
  return hits / len(golds_per_question)
