"""RULER-HotpotQA: gold paragraphs kept, sizes hit, deterministic, every input format."""

import json
import pathlib
import re

import pytest

from memtrain_jax.tasks import ruler_hotpotqa as rh

SHARED_DEV = (pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" /
              "hotpotqa_dev_gold_q000-049.json")


class WhitespaceTokenizer:

  def encode(self, text):
    return [0] * len(text.split())


def make_record(q, n_paragraphs=10, columnar=False):
  """A HotpotQA record whose paragraphs 0 and 3 are gold."""
  titles = [f"Title {q}-{i}" for i in range(n_paragraphs)]
  sentences = [[f"Fact {q} {i} one.", f" Fact {q} {i} two words here."]
               for i in range(n_paragraphs)]
  facts = [[titles[0], 0], [titles[3], 1]]
  if columnar:
    context = {"title": titles, "sentences": sentences}
    facts = {"title": [t for t, _ in facts], "sent_id": [s for _, s in facts]}
  else:
    context = [[t, s] for t, s in zip(titles, sentences)]
  return {"_id": f"id{q}", "question": f"Question {q}? ", "answer": f"answer {q}",
          "supporting_facts": facts, "context": context}


@pytest.fixture
def list_of_pairs_file(tmp_path):
  path = tmp_path / "hotpot_dev_distractor_tiny.json"
  path.write_text(json.dumps([make_record(q) for q in range(6)]), encoding="utf-8")
  return path


def documents_of(sample):
  """Splits a rendered context back into its documents, checking the numbering."""
  blocks = sample.context.split(rh.DOCUMENT_SEPARATOR)
  docs = []
  for i, block in enumerate(blocks):
    header, _, body = block.partition("\n")
    assert header == f"Document {i + 1}:"
    docs.append(body)
  return docs


def test_reads_list_of_pairs(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  assert len(questions) == 6
  q = questions[2]
  assert q.question == "Question 2?" and q.answers == ("answer 2",) and q.qid == "id2"
  assert q.paragraphs[0] == "Title 2-0\nFact 2 0 one. Fact 2 0 two words here."
  assert q.gold_paragraphs == (q.paragraphs[0], q.paragraphs[3])


def test_columnar_and_list_of_pairs_agree(tmp_path, list_of_pairs_file):
  path = tmp_path / "columnar.json"
  path.write_text(json.dumps([make_record(q, columnar=True) for q in range(6)]), encoding="utf-8")
  assert rh.load_hotpotqa(path) == rh.load_hotpotqa(list_of_pairs_file)


def test_shared_dev_file_builds_with_gold_paragraphs():
  if not SHARED_DEV.exists():
    pytest.skip("../shared/data is not on this machine")
  questions = rh.load_hotpotqa(SHARED_DEV)[:5]
  assert questions[0].question.startswith("Were Scott Derrickson and Ed Wood")
  assert questions[0].answers == ("yes",)
  assert all(len(q.paragraphs) == 10 and len(q.gold_paragraphs) == 2 for q in questions)
  samples = rh.build_ruler_hotpotqa(questions, num_docs=20, pool=rh.build_document_pool(
      rh.load_hotpotqa(SHARED_DEV)))
  for question, sample in zip(questions, samples):
    docs = documents_of(sample)
    assert len(docs) == 20
    assert set(question.paragraphs) <= set(docs)


def test_own_paragraphs_kept_and_distractors_from_pool(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  pool = rh.build_document_pool(questions)
  assert len(pool) == 60
  for question, sample in zip(questions, rh.build_ruler_hotpotqa(questions, num_docs=25)):
    docs = documents_of(sample)
    assert sample.num_docs == len(docs) == len(set(docs)) == 25
    assert set(question.paragraphs) <= set(docs)
    assert set(docs) <= set(pool)
    assert sorted(docs[i] for i in sample.evidence_positions) == sorted(question.gold_paragraphs)
    assert (sample.question, sample.answers) == (question.question, question.answers)


def test_fewer_documents_than_own_paragraphs_keeps_gold(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  for question, sample in zip(questions, rh.build_ruler_hotpotqa(questions, num_docs=3)):
    docs = documents_of(sample)
    assert len(docs) == 3 and set(question.gold_paragraphs) <= set(docs)
  with pytest.raises(ValueError, match="gold"):
    rh.build_ruler_hotpotqa(questions, num_docs=1)


def test_more_documents_than_pool_takes_whole_pool(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  pool = rh.build_document_pool(questions)
  sample = rh.build_ruler_hotpotqa(questions[:1], num_docs=1000, pool=pool)[0]
  assert sorted(documents_of(sample)) == rh.build_document_pool(questions)


def test_deterministic_for_a_seed_and_varies_with_it(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  first = rh.build_ruler_hotpotqa(questions, num_docs=30, seed=4)
  assert first == rh.build_ruler_hotpotqa(questions, num_docs=30, seed=4)
  assert first != rh.build_ruler_hotpotqa(questions, num_docs=30, seed=5)
  # Different questions get different distractors, not one shared draw.
  assert set(documents_of(first[0])) - set(questions[0].paragraphs) != \
      set(documents_of(first[1])) - set(questions[1].paragraphs)


@pytest.mark.parametrize("target", [200, 450, 800])
def test_target_token_length_within_ten_percent(list_of_pairs_file, target):
  tokenizer = WhitespaceTokenizer()
  questions = rh.load_hotpotqa(list_of_pairs_file)
  samples = rh.build_ruler_hotpotqa_for_tokens(questions, target, tokenizer)
  for question, sample in zip(questions, samples):
    tokens = len(tokenizer.encode(sample.context))
    assert abs(tokens - target) <= 0.1 * target, (tokens, target)
    assert set(question.gold_paragraphs) <= set(documents_of(sample))
    assert sample.num_docs == len(documents_of(sample))
  # Each document here is about 14 whitespace tokens with its header, so the counts track it.
  assert samples[0].num_docs == pytest.approx(target / 14, rel=0.15)


def test_unreachable_token_target_is_an_error(list_of_pairs_file):
  questions = rh.load_hotpotqa(list_of_pairs_file)
  with pytest.raises(ValueError, match="off the target"):
    rh.build_ruler_hotpotqa_for_tokens(questions, 100_000, WhitespaceTokenizer())


def test_memagent_eval_json_loads_as_built_samples(tmp_path):
  record = {"context": "Document 1:\nA\nx\n\nDocument 2:\nB\ny", "input": "Who?",
            "answers": ["Ann", "Anne"], "num_docs": 2, "index": 17}
  path = tmp_path / "eval_hotpotqa_7k.json"
  path.write_text(json.dumps([record, {**record, "answers": "Bob", "index": 3}]), encoding="utf-8")
  first, second = rh.load_memagent_eval(path)
  assert first == rh.RulerSample(context=record["context"], question="Who?",
                                 answers=("Ann", "Anne"), num_docs=2, index=17)
  assert second.answers == ("Bob",)


def test_memagent_parquet_loads_as_built_samples(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  table = pa.Table.from_pylist([{
      "context": "Document 1:\nA\nx", "data_source": "hotpotqa",
      "prompt": [{"role": "user", "content": "Who wrote it?"}],
      "reward_model": {"style": "rule", "ground_truth": ["Ann"]},
      "extra_info": {"index": 5, "num_docs": 1}}])
  path = tmp_path / "hotpotqa_dev.parquet"
  pq.write_table(table, path)
  (sample,) = rh.load_memagent_parquet(path)
  assert sample == rh.RulerSample(context="Document 1:\nA\nx", question="Who wrote it?",
                                  answers=("Ann",), num_docs=1, index=5)


def test_render_documents_format():
  assert rh.render_documents(["T1\nbody one", "T2\nbody two"]) == (
      "Document 1:\nT1\nbody one\n\nDocument 2:\nT2\nbody two")
  assert re.fullmatch(r"T\nA B", rh.format_paragraph("T", ["A", " B"]))
