"""Long-QA evaluation pieces: deterministic samples, MemAgent files, centre truncation, scoring."""

import json

import pytest

from memtrain_jax.data.tokens import RegexTokenizer, TokenCounter
from memtrain_jax.evaluation import config as eval_config_lib
from memtrain_jax.evaluation import longqa
from memtrain_jax.tasks import ruler_hotpotqa as rhq


def _long_qa(**fields):
  section = eval_config_lib.eval_config().long_qa
  section.update(fields)
  return section


def test_samples_are_deterministic_and_indexed_in_the_source():
  cfg = _long_qa(question_start=3, question_count=2)
  first = longqa.SampleSource(cfg, RegexTokenizer())
  again = longqa.SampleSource(cfg, RegexTokenizer())
  samples = first.samples("tokens", 300)
  assert samples == again.samples("tokens", 300)
  assert first.samples("tokens", 300) is samples  # cached: every model reads the same samples
  assert [first.question_index(s) for s in samples] == [3, 4]
  counter = TokenCounter(RegexTokenizer())
  for sample in samples:
    assert abs(counter.count(sample.context) - 300) <= 0.25 * 300
  by_docs = first.samples("num_docs", 4)
  assert [s.num_docs for s in by_docs] == [4, 4]


def test_distractor_pool_choice():
  selected = longqa.SampleSource(_long_qa(question_count=2), RegexTokenizer())
  everything = longqa.SampleSource(_long_qa(question_count=2, distractor_pool="source"),
                                   RegexTokenizer())
  own = set(selected._questions()[1])
  for sample in selected.samples("num_docs", 15):
    docs = {d.split("\n", 1)[1] for d in sample.context.split(rhq.DOCUMENT_SEPARATOR)}
    assert docs <= own  # 'selected': only the two questions' own paragraphs
  assert len(everything._questions()[1]) > len(own)


def test_memagent_files_by_document_count(tmp_path):
  for n in (50, 100):
    records = [{"context": f"Document 1:\nctx {n} {i}", "input": f"q{i}?", "answers": [f"a{i}"]}
               for i in range(5)]
    (tmp_path / f"eval_{n}.json").write_text(json.dumps(records), encoding="utf-8")
  cfg = _long_qa(source=str(tmp_path / "eval_{num_docs}.json"), lengths=(), num_docs=(50, 100),
                 question_start=1, question_count=3)
  source = longqa.SampleSource(cfg, RegexTokenizer())
  samples = source.samples("num_docs", 100)
  assert [s.question for s in samples] == ["q1?", "q2?", "q3?"]
  assert samples[0].context == "Document 1:\nctx 100 1"
  assert [source.question_index(s) for s in samples] == [1, 2, 3]


def test_full_context_prompt_is_centre_truncated():
  counter = TokenCounter(RegexTokenizer())
  words = " ".join(f"w{i}" for i in range(100))
  sample = rhq.RulerSample(context=words, question="Which?", answers=("w0",), num_docs=1, index=0)
  text, tokens, truncated = longqa.full_context_prompt(sample, counter, 10,
                                                       longqa.FULL_CONTEXT_TEMPLATE)
  assert tokens == 100 and truncated
  article = text.split("<article>\n")[1].split("\n</article>")[0]
  assert article == "w0 w1 w2 w3 w4 w95 w96 w97 w98 w99"
  assert "<problem>\nWhich?\n</problem>" in text and "\\boxed{}" in text
  text, _, truncated = longqa.full_context_prompt(sample, counter, 1000,
                                                  longqa.FULL_CONTEXT_TEMPLATE)
  assert not truncated and words in text


def test_scores_use_the_first_answer_like_memagent():
  sample = rhq.RulerSample(context="", question="q", answers=("Paris", "City of Light"),
                           num_docs=1, index=7)
  first, = longqa.score_records([sample], ["so \\boxed{the City of Light}"], True)
  anyone, = longqa.score_records([sample], ["so \\boxed{the City of Light}"], False)
  assert (first["sub_em"], first["em"], first["prediction"]) == (0.0, 0.0, "the City of Light")
  assert (anyone["sub_em"], anyone["em"], anyone["f1"]) == (1.0, 1.0, 1.0)
  assert first["question_index"] == 7
  assert longqa.aggregate([first, anyone]) == {"sub_em": 0.5, "em": 0.5, "f1": 0.5,
                                               "num_questions": 2, "boxed_fraction": 1.0}


@pytest.mark.real_model
def test_smollm2_full_context_prompts_hold_the_whole_context(bundled_model_path):
  from memtrain_jax import models, rewards
  from memtrain_jax.evaluation import runner

  cfg = eval_config_lib.eval_config()
  cfg.models = (f"base={bundled_model_path}",)
  cfg.agent.answer_max_tokens = 16
  cfg.agent.memory_max_tokens = 16
  cfg.agent.chunk_size = 256
  cfg.agent.prompt_max_tokens = 256
  cfg.agent.answer_prefix = "\\boxed{"
  cfg.long_qa.question_count = 2
  model_config, params = models.load_pretrained(bundled_model_path)
  tokenizer = models.load_tokenizer(bundled_model_path)
  sampler = runner.Sampler(model_config, tokenizer, runner.long_qa_sampler_config(cfg))
  samples = longqa.SampleSource(cfg.long_qa, tokenizer).samples("tokens", 512)
  records = longqa.run_full_context_cell(sampler, params, samples, cfg)
  assert [r["question_index"] for r in records] == [0, 1]
  for record in records:
    assert not record["context_truncated"] and 380 < record["context_tokens"] < 700
    # The chat-templated prompt holds the whole context plus the instruction and question.
    assert record["context_tokens"] + 50 < record["prompt_tokens"] < record["context_tokens"] + 200
    assert record["completion"].startswith("\\boxed{")
    assert len(record["completion"]) > len("\\boxed{") + 5  # the model wrote something
    # SmolLM2-135M mostly leaves the box open (scored 0); either way the scorer agrees.
    assert record["prediction"] == rewards.extract_boxed(record["completion"])
