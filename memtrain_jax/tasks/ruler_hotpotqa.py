"""RULER-HotpotQA: long-context multi-hop QA built from HotpotQA (MemAgent's eval, anchors B §2.1).

For each question: its own context paragraphs (2 gold + 8 HotpotQA distractors), plus paragraphs
drawn at random from the pool of every unique paragraph in the source file until there are N, then
shuffled with `random.Random(seed)` (MemAgent: seed 4, N = 50..6400 ≈ 7K..896K tokens) and rendered
as "Document i:\\n<title>\\n<sentences>" blocks separated by blank lines.

Inputs: HotpotQA json in the original list-of-pairs form (`context: [[title, [sentences]], ...]`) or
the columnar form of the `hotpot_qa` data set (`context: {"title": [...], "sentences": [...]}`);
MemAgent's already-built `eval_hotpotqa_*.json` (`context`, `input`, `answers`) and
`hotpotqa_*.parquet` (verl rows: `context`, `prompt`, `reward_model.ground_truth`) load as samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

MEMAGENT_SEED = 4
MEMAGENT_NUM_DOCS = (50, 100, 200, 400, 800, 1600, 3200, 6400)
DOCUMENT_TEMPLATE = "Document {i}:\n{document}"
DOCUMENT_SEPARATOR = "\n\n"


class TextEncoder(Protocol):
  def encode(self, text: str) -> Sequence[int]:
    ...


@dataclasses.dataclass(frozen=True)
class HotpotQuestion:
  question: str
  answers: tuple[str, ...]
  paragraphs: tuple[str, ...]  # "title\nsentences joined", in the source file's order
  gold_paragraphs: tuple[str, ...]  # the paragraphs whose titles the supporting facts cite
  qid: str | None = None


@dataclasses.dataclass(frozen=True)
class RulerSample:
  context: str
  question: str
  answers: tuple[str, ...]
  num_docs: int
  index: int  # position of the question in its source file
  evidence_positions: tuple[int, ...] = ()  # 0-based document positions of the gold paragraphs


def format_paragraph(title: str, sentences: Sequence[str]) -> str:
  # HotpotQA sentences carry their own leading spaces, so they are joined with nothing.
  return f"{title}\n{''.join(sentences)}"


def render_documents(documents: Sequence[str]) -> str:
  return DOCUMENT_SEPARATOR.join(
      DOCUMENT_TEMPLATE.format(i=i + 1, document=d) for i, d in enumerate(documents))


# ----------------------------------------------------------------------------- reading HotpotQA


def _title_sentence_pairs(context: object) -> list[tuple[str, list[str]]]:
  if isinstance(context, Mapping):  # columnar: {"title": [...], "sentences": [[...], ...]}
    return list(zip(context["title"], context["sentences"]))
  if isinstance(context, list):  # original: [[title, [sentences]], ...]
    return [(title, sentences) for title, sentences in context]
  raise ValueError(f"unrecognised HotpotQA context of type {type(context).__name__}")


def _supporting_titles(facts: object) -> set[str]:
  if isinstance(facts, Mapping):
    return set(facts["title"])
  return {title for title, _ in facts or []}


def question_from_record(record: Mapping) -> HotpotQuestion:
  pairs = _title_sentence_pairs(record["context"])
  paragraphs = tuple(format_paragraph(t, s) for t, s in pairs)
  supporting = _supporting_titles(record.get("supporting_facts"))
  gold = tuple(p for (t, _), p in zip(pairs, paragraphs) if t in supporting)
  answers = record.get("answers", record.get("answer"))
  answers = (answers,) if isinstance(answers, str) else tuple(answers)
  qid = record.get("_id", record.get("id"))
  return HotpotQuestion(question=record["question"].strip(), answers=answers,
                        paragraphs=paragraphs, gold_paragraphs=gold,
                        qid=None if qid is None else str(qid))


def load_hotpotqa(path: str | os.PathLike[str]) -> list[HotpotQuestion]:
  """Reads a HotpotQA json list (dev/train, either context layout)."""
  with open(path, encoding="utf-8") as f:
    records = json.load(f)
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of HotpotQA records")
  return [question_from_record(r) for r in records]


def build_document_pool(questions: Sequence[HotpotQuestion]) -> list[str]:
  """Every unique paragraph of the source, sorted so that the pool does not depend on hashing."""
  return sorted({p for q in questions for p in q.paragraphs})


# ----------------------------------------------------------------------------- building samples


class _DistractorStream:
  """Pool indices in a seeded random order, skipping the question's own paragraphs.

  Draws lazily by rejection, so taking n then n+k documents gives the first n again: the document
  count can be searched without resampling, and N=6400 needs no 66K-element shuffle.
  """

  def __init__(self, pool_size: int, exclude: set[int], rng: random.Random):
    self._pool_size = pool_size
    self._seen = set(exclude)
    self._rng = rng
    self.available = pool_size - len(self._seen)
    self.drawn: list[int] = []

  def take(self, count: int) -> list[int]:
    count = max(0, min(count, self.available))
    while len(self.drawn) < count:
      i = self._rng.randrange(self._pool_size)
      if i not in self._seen:
        self._seen.add(i)
        self.drawn.append(i)
    return self.drawn[:count]


class _SampleBuilder:
  """Builds one question's sample at any document count."""

  def __init__(self, question: HotpotQuestion, index: int, pool: Sequence[str],
               pool_index: Mapping[str, int], seed: int):
    own = list(dict.fromkeys(question.paragraphs))
    missing = [p for p in own if p not in pool_index]
    if missing:
      raise ValueError(f"question {index}: {len(missing)} of its paragraphs are not in the pool")
    gold = set(question.gold_paragraphs)
    # When N is below the own-paragraph count, the gold ones are kept first.
    self._own = [p for p in own if p in gold] + [p for p in own if p not in gold]
    self._gold = gold
    self._question = question
    self._index = index
    self._pool = pool
    self._seed = seed
    # A per-question stream; string seeds hash deterministically (sha512) across runs.
    self._stream = _DistractorStream(len(pool), {pool_index[p] for p in own},
                                     random.Random(f"ruler-hotpotqa:{seed}:{index}"))
    self.max_docs = len(own) + self._stream.available
    self.min_docs = max(1, len(gold))
    self._token_counts: dict[int, int] = {}

  def documents(self, num_docs: int) -> list[str]:
    if num_docs < self.min_docs:
      raise ValueError(f"question {self._index}: {num_docs} documents cannot hold its "
                       f"{len(self._gold)} gold paragraphs")
    docs = self._own[:num_docs]
    docs += [self._pool[i] for i in self._stream.take(num_docs - len(docs))]
    order = list(range(len(docs)))
    random.Random(self._seed).shuffle(order)  # MemAgent's fixed-seed shuffle
    return [docs[i] for i in order]

  def sample(self, num_docs: int) -> RulerSample:
    docs = self.documents(num_docs)
    return RulerSample(
        context=render_documents(docs), question=self._question.question,
        answers=self._question.answers, num_docs=len(docs), index=self._index,
        evidence_positions=tuple(i for i, d in enumerate(docs) if d in self._gold))

  def _tokens(self, num_docs: int, tokenizer: TextEncoder) -> int:
    if num_docs not in self._token_counts:
      self._token_counts[num_docs] = count_tokens(
          render_documents(self.documents(num_docs)), tokenizer)
    return self._token_counts[num_docs]

  def num_docs_for_tokens(self, target_tokens: int, tokenizer: TextEncoder,
                          tolerance: float) -> int:
    """The document count whose context is closest to `target_tokens`, by bisection.

    Documents are only ever added (the distractor stream is a fixed order), so the token count
    grows with the document count and bisection applies.
    """
    self._token_counts.clear()  # counts are per tokenizer
    lo = hi = self.min_docs
    while hi < self.max_docs and self._tokens(hi, tokenizer) < target_tokens:
      lo, hi = hi, min(2 * hi, self.max_docs)  # grow the bracket geometrically
    while lo < hi:  # the smallest count in [lo, hi] reaching the target (hi if none does)
      mid = (lo + hi) // 2
      if self._tokens(mid, tokenizer) >= target_tokens:
        hi = mid
      else:
        lo = mid + 1
    candidates = [n for n in (hi - 1, hi) if n >= self.min_docs]
    best = min(candidates, key=lambda n: abs(self._tokens(n, tokenizer) - target_tokens))
    got = self._tokens(best, tokenizer)
    error = abs(got - target_tokens) / target_tokens
    if error > tolerance:
      raise ValueError(
          f"question {self._index}: the closest document count ({best}) gives {got} tokens, "
          f"{error:.0%} off the target {target_tokens} (tolerance {tolerance:.0%}); the target "
          f"is below its gold paragraphs, above the whole pool, or finer than one document")
    return best


def _builders(questions: Sequence[HotpotQuestion], pool: Sequence[str] | None,
              seed: int) -> Iterator[_SampleBuilder]:
  pool = build_document_pool(questions) if pool is None else pool
  pool_index = {p: i for i, p in enumerate(pool)}
  for index, question in enumerate(questions):
    yield _SampleBuilder(question, index, pool, pool_index, seed)


def build_ruler_hotpotqa(questions: Sequence[HotpotQuestion], num_docs: int,
                         seed: int = MEMAGENT_SEED,
                         pool: Sequence[str] | None = None) -> list[RulerSample]:
  """One sample per question with `num_docs` documents (all of the pool if it has fewer)."""
  return [b.sample(min(num_docs, b.max_docs)) for b in _builders(questions, pool, seed)]


def count_tokens(text: str, tokenizer: TextEncoder) -> int:
  return len(tokenizer.encode(text))


def build_ruler_hotpotqa_for_tokens(questions: Sequence[HotpotQuestion], target_tokens: int,
                                    tokenizer: TextEncoder, seed: int = MEMAGENT_SEED,
                                    tolerance: float = 0.1,
                                    pool: Sequence[str] | None = None) -> list[RulerSample]:
  """One sample per question whose context is `target_tokens` long within `tolerance`.

  The document count is chosen per question (MemAgent fixes N per length and lets the token count
  vary, N=50 being about 7K tokens); this guarantees each context's length instead.
  """
  if target_tokens <= 0:
    raise ValueError(f"target_tokens must be > 0, got {target_tokens}")
  samples = []
  for builder in _builders(questions, pool, seed):
    samples.append(builder.sample(builder.num_docs_for_tokens(target_tokens, tokenizer, tolerance)))
  return samples


# ----------------------------------------------------------------------------- MemAgent's files


def sample_from_memagent_record(record: Mapping, position: int) -> RulerSample:
  """A row of `eval_hotpotqa_*.json`: `context` is already the rendered document."""
  answers = record["answers"]
  answers = (answers,) if isinstance(answers, str) else tuple(answers)
  question = record.get("input", record.get("question"))
  if not isinstance(question, str) or not isinstance(record.get("context"), str):
    raise ValueError(f"record {position}: expected string 'context' and 'input' fields")
  return RulerSample(context=record["context"], question=question, answers=answers,
                     num_docs=int(record.get("num_docs", 0)),
                     index=int(record.get("index", position)))


def load_memagent_eval(path: str | os.PathLike[str]) -> list[RulerSample]:
  with open(path, encoding="utf-8") as f:
    records = json.load(f)
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of MemAgent eval records")
  return [sample_from_memagent_record(r, i) for i, r in enumerate(records)]


def _parquet_question(prompt: object) -> str:
  # verl rows hold the chat as [{"role": "user", "content": question}]; plain strings also occur.
  if isinstance(prompt, str):
    return prompt
  if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], Mapping):
    return prompt[0]["content"]
  raise ValueError(f"unrecognised prompt field {prompt!r:.100}")


def load_memagent_parquet(path: str | os.PathLike[str]) -> list[RulerSample]:
  """MemAgent's `hotpotqa_*.parquet` (verl format); needs pyarrow."""
  try:
    import pyarrow.parquet as pq  # Optional: only these files need it.
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs pyarrow: pip install pyarrow (or convert it to the "
        f"eval_*.json layout)") from e
  samples = []
  for i, row in enumerate(pq.read_table(path).to_pylist()):
    extra = row.get("extra_info") or {}
    reward_model = row.get("reward_model") or {}
    answers = reward_model.get("ground_truth", row.get("answers"))
    answers = (answers,) if isinstance(answers, str) else tuple(answers)
    samples.append(RulerSample(
        context=row["context"], question=_parquet_question(row.get("prompt", row.get("input"))),
        answers=answers, num_docs=int(extra.get("num_docs", 0)), index=int(extra.get("index", i))))
  return samples
