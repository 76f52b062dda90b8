"""Scripted policies against the real loopback BM25 server."""

import json

import pytest

from memtrain_jax.agent import search_env as se
from memtrain_jax.retrieval.bm25 import BM25Retriever
from memtrain_jax.retrieval.client import RetrievalClient
from memtrain_jax.retrieval.server import serving

CORPUS = [
    {"title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris."},
    {"title": "Colosseum", "text": "The Colosseum is an oval amphitheatre in the centre of Rome."},
    {"title": "Brandenburg Gate", "text": "The Brandenburg Gate is a monument in Berlin."},
]


class WhitespaceCodec:
  """Words as tokens: enough to check token caps without a model tokenizer."""

  def __init__(self):
    self.vocab, self.words = {}, []

  def encode(self, text):
    ids = []
    for word in text.split():
      if word not in self.vocab:
        self.vocab[word] = len(self.words)
        self.words.append(word)
      ids.append(self.vocab[word])
    return ids

  def decode(self, ids):
    return " ".join(self.words[i] for i in ids)


class CountingRetriever:

  def __init__(self, inner):
    self.inner, self.calls = inner, []

  def retrieve(self, queries, topk):
    self.calls.append(list(queries))
    return self.inner.retrieve(queries, topk)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in CORPUS), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def client(corpus_path):
  with serving(BM25Retriever.from_jsonl(corpus_path)) as server:
    yield RetrievalClient(server.url, timeout=5, retries=0)


def run(tasks, policy, retriever, **config):
  return se.run_search_episodes(tasks, policy, retriever, se.SearchEnvConfig(**config),
                                tokenizer=WhitespaceCodec())


EIFFEL = se.SearchTask(questions=("In which city is the Eiffel Tower?",), golds=(("Paris",),))


def search_then_answer(prompts):
  replies = []
  for prompt in prompts:
    if "Doc 1(Title:" not in prompt:  # the instruction itself mentions <information>
      replies.append("<think>I need the tower's city.</think>\n<search>Eiffel Tower wrought-iron"
                     "</search> text generated past the stop string <answer>Lyon</answer>")
    elif "Paris" in prompt:
      replies.append("<think>The Eiffel Tower is in Paris.</think>\n<answer>Paris</answer>")
    else:
      replies.append("<think>Not found.</think><answer>unknown</answer>")
  return replies


def test_search_information_then_correct_answer(client):
  (episode,) = run([EIFFEL], search_then_answer, client)
  first, second = episode.turns
  assert (first.action, first.content) == ("search", "Eiffel Tower wrought-iron")
  assert first.response.endswith("</search>")  # cut at the stop string: the later answer is gone
  assert first.internal_state == "I need the tower's city."
  assert '<information>[HINT]You have 5 turns left.[/HINT]' in first.observation
  assert 'Doc 1(Title: "Eiffel Tower") The Eiffel Tower is a wrought-iron lattice tower in Paris.' \
      in first.observation
  # The next prompt is the task prompt, the previous reply and its information, nothing else.
  assert second.prompt == first.prompt + first.response + first.observation
  assert first.prompt.count("Question 1: In which city is the Eiffel Tower?") == 1
  assert (second.action, episode.answer, episode.reward) == ("answer", "Paris", 1.0)
  assert second.observation == "" and episode.num_searches == 1


def test_only_the_last_reply_is_carried(client):
  replies = iter(["<think>A</think><search>Colosseum</search>",
                  "<think>B</think><search>Brandenburg</search>",
                  "<think>C</think><answer>Paris</answer>"])
  (episode,) = run([EIFFEL], lambda prompts: [next(replies)], client)
  third_prompt = episode.turns[2].prompt
  assert "<think>B</think>" in third_prompt and "Brandenburg Gate" in third_prompt
  assert "<think>A</think>" not in third_prompt and "Colosseum" not in third_prompt


def test_turn_cap_ends_without_answer(client):
  retriever = CountingRetriever(client)
  always_search = lambda prompts: ["<think>more</think><search>tower</search>"] * len(prompts)
  (episode,) = run([EIFFEL], always_search, retriever, max_turns=3)
  assert len(episode.turns) == 3
  assert (episode.answer, episode.reward) == (None, 0.0)
  assert len(retriever.calls) == 2  # the last turn's search is not run
  assert "you must give your answers next turn" in episode.turns[1].observation
  assert episode.turns[2].observation == ""


def test_default_turn_cap_is_six(client):
  always_search = lambda prompts: ["<search>tower</search>"] * len(prompts)
  (episode,) = run([EIFFEL], always_search, client)
  assert len(episode.turns) == 6


@pytest.mark.parametrize("bad_reply", [
    "I think it is Paris.",  # no tags
    "<search>   </search>",  # empty query
    "<answer>Paris",  # unclosed
])
def test_invalid_action_gets_corrective_observation(client, bad_reply):
  replies = iter([bad_reply, "<answer>Paris</answer>"])
  (episode,) = run([EIFFEL], lambda prompts: [next(replies)], client)
  first, second = episode.turns
  assert (first.action, first.content) == ("invalid", "")
  assert "did not contain a valid action" in first.observation
  assert "<information>" not in first.observation
  assert first.observation in second.prompt
  assert episode.reward == 1.0


def test_response_is_capped_in_tokens(client):
  long_reply = "<think>" + " ".join(f"w{i}" for i in range(50)) + "</think><answer>Paris</answer>"
  (episode,) = run([EIFFEL], lambda prompts: [long_reply], client, max_turns=1,
                   max_response_tokens=10)
  (turn,) = episode.turns
  assert len(turn.response.split()) == 10
  assert turn.action == "invalid"  # the answer was past the cap
  assert episode.reward == 0.0


def test_retrieved_text_is_capped_in_tokens(client):
  replies = iter(["<search>Eiffel Tower</search>", "<answer>Paris</answer>"])
  (episode,) = run([EIFFEL], lambda prompts: [next(replies)], client, max_obs_tokens=5)
  observation = episode.turns[0].observation
  passages = observation.split("[/HINT]", 1)[1].split("</information>")[0]
  assert passages.split() == ["Doc", '1(Title:', '"Eiffel', 'Tower")', "The"]
  assert observation.rstrip().endswith("</information>")  # the block stays well formed


def test_two_questions_em_is_averaged(client):
  task = se.SearchTask(questions=("Where is the Eiffel Tower?", "Where is the Colosseum?"),
                       golds=(("Paris",), ("Rome", "Roma")))
  answers = {"both": "Paris; Roma", "one": "the Paris; Berlin", "none": "Lyon; Milan"}
  tasks = [with_marker(task, key) for key in answers]

  def policy(prompts):
    replies = []
    for prompt in prompts:
      key = next(k for k in answers if f"[{k}]" in prompt)
      replies.append(f"<answer>{answers[key]}</answer>")
    return replies

  episodes = run(tasks, policy, client)
  assert [e.reward for e in episodes] == [1.0, 0.5, 0.0]
  assert "Question 2: Where is the Colosseum?" in episodes[0].turns[0].prompt


def with_marker(task, key):
  """The same task with a marker in its first question, so the policy can tell them apart."""
  return se.SearchTask(questions=(task.questions[0] + f" [{key}]",) + task.questions[1:],
                       golds=task.golds)


def test_batches_shrink_as_episodes_finish(client):
  batch_sizes = []

  def policy(prompts):
    batch_sizes.append(len(prompts))
    return ["<answer>x</answer>" if "Answer now" in p else search_then_answer([p])[0]
            for p in prompts]

  quick = se.SearchTask(questions=("Answer now",), golds=(("x",),))
  episodes = run([EIFFEL, quick, EIFFEL], policy, client)
  assert batch_sizes == [3, 2]
  assert [len(e.turns) for e in episodes] == [2, 1, 2]
  assert [e.reward for e in episodes] == [1.0, 1.0, 1.0]


def test_in_process_bm25_is_a_retriever(corpus_path):
  (episode,) = run([EIFFEL], search_then_answer, BM25Retriever.from_jsonl(corpus_path))
  assert episode.reward == 1.0


def test_policy_must_answer_every_prompt(client):
  with pytest.raises(ValueError, match="one string per prompt"):
    run([EIFFEL, EIFFEL], lambda prompts: ["<answer>Paris</answer>"], client)


def test_bundle_tasks_pairs_questions():
  tasks = se.bundle_tasks(["q1", "q2", "q3", "q4", "q5"], [["a1"], ["a2"], ["a3"], ["a4"], ["a5"]])
  assert [t.questions for t in tasks] == [("q1", "q2"), ("q3", "q4")]
  assert tasks[1].golds == (("a3",), ("a4",))
  with pytest.raises(ValueError):
    se.SearchTask(questions=("q1", "q2"), golds=(("a1",),))
