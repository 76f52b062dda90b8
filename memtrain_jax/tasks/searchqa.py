"""Search-based QA (MEM1's task): question sets, multi-question tasks and the retriever to use.

Question files: Search-R1 / FlashRAG / MEM1 rows (`question` plus `golden_answers`, `answers` or
`answer`) as JSONL, a JSON list or parquet, HotpotQA json, or `tasks.longqa.BUNDLED_HOTPOTQA`.
Tasks bundle `questions_per_task` consecutive questions (MEM1 trains and evaluates with 2).

The retriever is the HTTP service at a URL (`retrieval.client.RetrievalClient`, e.g. an e5 +
FAISS wiki-18 server, or `memtrain serve-retrieval`), or an in-process BM25 index over a JSONL
corpus; the corpus `BUNDLED_CORPUS` is every paragraph of the bundled HotpotQA questions, so the
bundled questions are answerable offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from etils import epath

from memtrain_jax.agent import search_env
from memtrain_jax.retrieval.corpus import CorpusDoc, load_corpus
from memtrain_jax.retrieval.passage import contents_from_title_text
from memtrain_jax.tasks import longqa

BUNDLED_CORPUS = "bundled:hotpotqa-dev-50-paragraphs"


def _golds(row: Mapping, where: str) -> tuple[str, ...]:
  for key in ("golden_answers", "answers", "answer"):
    if key in row:
      value = row[key]
      if isinstance(value, Mapping) and "target" in value:  # verl reward_model-like rows
        value = value["target"]
      golds = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
      if golds:
        return golds
  raise ValueError(f"{where}: a QA row needs 'golden_answers', 'answers' or 'answer'; got keys "
                   f"{sorted(row)}")


def _rows(path: str) -> list[dict]:
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq  # optional: only parquet inputs need it
    except ImportError as e:
      raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    return pq.read_table(path).to_pylist()
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if text.lstrip().startswith("["):
    return json.loads(text)
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_qa(source: str, start: int = 0, count: int = 0) -> tuple[list[str], list[tuple[str, ...]]]:
  """(questions, gold aliases per question) of rows `start .. start + count` (count 0 = all)."""
  if source == longqa.BUNDLED_HOTPOTQA or source.endswith(".json") and _is_hotpotqa(source):
    questions = longqa.load_questions(source, start, count)
    return [q.question for q in questions], [tuple(q.answers) for q in questions]
  path = os.path.expanduser(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"QA source {source!r} does not exist; give a JSONL/JSON/parquet file "
                            f"of {{question, golden_answers}} rows or {longqa.BUNDLED_HOTPOTQA!r}")
  rows = _rows(path)
  end = len(rows) if count <= 0 else start + count
  if start < 0 or end > len(rows) or start >= end:
    raise ValueError(f"rows {start}..{end} requested but {source!r} has {len(rows)}")
  questions, golds = [], []
  for i in range(start, end):
    row = rows[i]
    if not isinstance(row.get("question"), str):
      raise ValueError(f"{source}: row {i} has no string 'question'")
    questions.append(row["question"].strip())
    golds.append(_golds(row, f"{source}: row {i}"))
  return questions, golds


def _is_hotpotqa(path: str) -> bool:
  with open(os.path.expanduser(path), encoding="utf-8") as f:
    head = f.read(4096)
  return head.lstrip().startswith("[") and '"supporting_facts"' in head


def load_tasks(source: str, *, questions_per_task: int = 2, start: int = 0,
               count: int = 0) -> list[search_env.SearchTask]:
  """Multi-question search tasks (MEM1: 2 per prompt) from a QA source."""
  questions, golds = load_qa(source, start, count)
  tasks = search_env.bundle_tasks(questions, golds, per_task=questions_per_task)
  if not tasks:
    raise ValueError(f"{source}: {len(questions)} question(s) make no task of "
                     f"{questions_per_task}; select more questions")
  return [search_env.SearchTask(t.questions, t.golds, task_id=f"{i}") for i, t in enumerate(tasks)]


def write_tasks(tasks: list[search_env.SearchTask], out_dir: epath.PathLike,
                info: dict | None = None) -> dict:
  """Writes tasks as one `DocumentStream` shard (one JSON row per task) plus a stats.json.

  `out_dir` may be a local path or a URL such as gs://bucket/data.
  """
  from memtrain_jax.data.stream import write_single_shard
  rows = [{"id": task.task_id or str(i), "questions": list(task.questions),
           "golds": [list(g) for g in task.golds]} for i, task in enumerate(tasks)]
  questions = len(tasks[0].questions) if tasks else 0
  return write_single_shard(rows, out_dir, {"questions_per_task": questions, **(info or {})})


def task_from_row(row: Mapping) -> search_env.SearchTask:
  """The inverse of `write_tasks` for one row."""
  return search_env.SearchTask(questions=tuple(row["questions"]),
                               golds=tuple(tuple(g) for g in row["golds"]),
                               task_id=str(row.get("id")))


def bundled_corpus_docs() -> list[CorpusDoc]:
  """Every unique paragraph of the bundled HotpotQA questions, in wiki-18's '"Title"\\ntext' form."""
  seen, docs = set(), []
  for question in longqa.load_questions(longqa.BUNDLED_HOTPOTQA):
    for paragraph in question.paragraphs:
      title, text = paragraph.split("\n", 1)
      if paragraph not in seen:
        seen.add(paragraph)
        docs.append(CorpusDoc(doc_id=str(len(docs)), contents=contents_from_title_text(title, text.strip())))
  return docs


def make_retriever(url: str = "", corpus: str = BUNDLED_CORPUS, *, timeout: float = 30.0):
  """The HTTP retriever at `url` when given, else in-process BM25 over `corpus`."""
  if url:
    from memtrain_jax.retrieval.client import RetrievalClient
    return RetrievalClient(url, timeout=timeout)
  from memtrain_jax.retrieval.bm25 import BM25Retriever
  if corpus == BUNDLED_CORPUS:
    return BM25Retriever(bundled_corpus_docs())
  path = os.path.expanduser(corpus)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"retrieval corpus {corpus!r} does not exist; give a JSONL corpus, "
                            f"{BUNDLED_CORPUS!r}, or a retrieval server URL")
  return BM25Retriever(load_corpus(path))
