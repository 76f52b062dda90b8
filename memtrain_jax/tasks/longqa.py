"""Long-text QA (MemAgent's RULER-HotpotQA task) as memory-agent documents, training sets and scores.

The same question becomes, depending on the caller:
- an `AgentDocument` for the memory agent (evaluation): the context cut into chunks of
  `chunk_size` policy tokens, the question as the problem, the gold aliases as answers;
- a built document dict (training, `DocumentStream` shards): the same fields, read by the
  `qa_final_answer` objective, so task RL (MemAgent) runs through the MemTrain trainer unchanged;
- a single full-context prompt for the base-model baseline, centre-truncated to the window.

Answers are read from the last `\\boxed{}` of a completion; evaluation reports sub-EM (MemAgent's
headline), EM and F1 with SQuAD normalisation (`rewards`). Training rewards use MemAgent's training
verifier (`rewards.training_exact_match`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Sequence

import numpy as np
from etils import epath

from memtrain_jax import rewards
from memtrain_jax.data.chunking import chunk_document
from memtrain_jax.data.stream import write_single_shard
from memtrain_jax.data.tokens import TokenCounter
from memtrain_jax.tasks import ruler_hotpotqa as rhq

BUNDLED_HOTPOTQA = "bundled:hotpotqa-dev-50"
_BUNDLED_FILE = "hotpotqa_dev_q000-049.json"


def load_questions(source: str, start: int = 0, count: int = 0) -> list[rhq.HotpotQuestion]:
  """HotpotQA questions `start .. start + count` (count 0 = to the end) of a file or the bundle.

  Args:
    source: `BUNDLED_HOTPOTQA` (the first 50 dev questions shipped with the package) or a HotpotQA
      json file in either context layout.
    start: index of the first question.
    count: how many; 0 takes all from `start`.
  """
  if source == BUNDLED_HOTPOTQA:
    resource = importlib.resources.files("memtrain_jax.tasks").joinpath("data", _BUNDLED_FILE)
    with resource.open("r", encoding="utf-8") as f:
      questions = [rhq.question_from_record(r) for r in json.load(f)]
  else:
    path = os.path.expanduser(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"HotpotQA source {source!r} does not exist; give a HotpotQA json "
                              f"file or {BUNDLED_HOTPOTQA!r}")
    questions = rhq.load_hotpotqa(path)
  end = len(questions) if count <= 0 else start + count
  if start < 0 or end > len(questions) or start >= end:
    raise ValueError(f"questions {start}..{end} requested but {source!r} has {len(questions)}")
  return questions[start:end]


def chunk_context(context: str, tokenizer, chunk_size: int) -> list[str]:
  """The context cut into chunks of at most `chunk_size` tokens of `tokenizer`, at word starts."""
  counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
  return [c.text for c in chunk_document(context, counter, chunk_size)]


def document_dict(sample: rhq.RulerSample, chunks: Sequence[str], doc_id: str) -> dict:
  """A training/eval document in the shard format `DocumentStream` reads."""
  answers = list(dict.fromkeys(a for a in sample.answers if a))
  if not answers:
    raise ValueError(f"question {sample.index} ({sample.question!r:.60}) has no gold answer")
  return {"id": doc_id, "problem": sample.question, "chunks": list(chunks), "answer": answers[0],
          "answer_aliases": answers[1:], "num_docs": sample.num_docs,
          "evidence_positions": list(sample.evidence_positions), "question_index": sample.index}


def build_documents(samples: Sequence[rhq.RulerSample], tokenizer, chunk_size: int,
                    tag: str = "") -> list[dict]:
  """`document_dict`s of the samples, chunked in the policy's tokens."""
  counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
  return [document_dict(s, chunk_context(s.context, counter, chunk_size),
                        f"hqa{tag}-{s.index}") for s in samples]


def write_documents(documents: Sequence[dict], out_dir: epath.PathLike,
                    info: dict | None = None) -> epath.PathLike:
  """Writes documents as one `DocumentStream` shard plus a stats.json; returns `out_dir`.

  `out_dir` may be a local path or a URL such as gs://bucket/data.
  """
  chunks = [len(d["chunks"]) for d in documents] or [0]
  write_single_shard(documents, out_dir, {"chunks_mean": float(np.mean(chunks)),
                                          "chunks_max": int(max(chunks)), **(info or {})})
  return out_dir


def build_training_set(source: str, out_dir: epath.PathLike, tokenizer, *,
                       target_tokens: Sequence[int], chunk_size: int, question_start: int = 0,
                       question_count: int = 0, seed: int = rhq.MEMAGENT_SEED,
                       length_tolerance: float = 0.1) -> dict:
  """RULER-HotpotQA training documents (MemAgent task RL): each question at each target length.

  Distractors come from the pool of the selected questions' own paragraphs, so training and
  evaluation on disjoint question ranges also use disjoint paragraphs. MemAgent's own built
  training file (`hotpotqa_train_32k.parquet`) or eval files (`eval_hotpotqa_*.json`) are also
  accepted: their contexts are used as they are and `target_tokens` is ignored.
  """
  counter = TokenCounter(tokenizer)  # counts without special tokens: what the chunks will hold
  if source.endswith((".parquet", ".json")) and _is_memagent_file(source):
    samples = (rhq.load_memagent_parquet(source) if source.endswith(".parquet") else
               rhq.load_memagent_eval(source))
    end = len(samples) if question_count <= 0 else question_start + question_count
    documents = build_documents(samples[question_start:end], counter, chunk_size)
    write_documents(documents, out_dir, {"task": "long_qa", "source": source,
                                         "chunk_size": chunk_size})
    return {"documents": len(documents), "out_dir": out_dir}
  questions = load_questions(source, question_start, question_count)
  documents = []
  for tokens in target_tokens:
    samples = rhq.build_ruler_hotpotqa_for_tokens(questions, int(tokens), counter, seed=seed,
                                                  tolerance=length_tolerance)
    documents += build_documents(samples, counter, chunk_size, tag=f"{tokens}t")
  write_documents(documents, out_dir, {
      "task": "long_qa", "source": source, "question_start": question_start,
      "questions": len(questions), "target_tokens": list(target_tokens), "chunk_size": chunk_size})
  return {"documents": len(documents), "out_dir": out_dir}


def _is_memagent_file(source: str) -> bool:
  """MemAgent's built files carry a rendered `context` string; HotpotQA json has paragraph lists."""
  path = os.path.expanduser(source)
  if path.endswith(".parquet"):
    return True
  with open(path, encoding="utf-8") as f:
    head = f.read(65536)
  return '"supporting_facts"' not in head and '"context": "' in head


def centre_truncate(ids: Sequence[int], max_tokens: int) -> list[int]:
  """Keeps the first and last `max_tokens / 2` tokens (MemAgent's centre truncation)."""
  ids = list(ids)
  if max_tokens <= 0:
    raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
  if len(ids) <= max_tokens:
    return ids
  head = max_tokens // 2
  return ids[:head] + ids[len(ids) - (max_tokens - head):]


@dataclasses.dataclass(frozen=True)
class AnswerScores:
  sub_em: float
  em: float
  f1: float
  prediction: str | None  # the last \\boxed{} content; None when the completion has none


def score_answer(completion: str, golds: Sequence[str]) -> AnswerScores:
  """Evaluation metrics of one completion: sub-EM, EM and F1 of its last boxed answer."""
  prediction = rewards.extract_boxed(completion)
  return AnswerScores(sub_em=rewards.sub_exact_match(prediction, golds),
                      em=rewards.exact_match(prediction, golds),
                      f1=rewards.f1_score(prediction, golds), prediction=prediction)
