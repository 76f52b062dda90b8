"""End-to-end tests of the /retrieve protocol over loopback HTTP."""

import json
import urllib.error
import urllib.request

import pytest

from memtrain_jax.retrieval import server as server_lib
from memtrain_jax.retrieval.bm25 import BM25Retriever
from memtrain_jax.retrieval.corpus import load_corpus
from memtrain_jax.retrieval.passage import Passage, format_passages


def post(url, body, *, raw=False):
  data = body if raw else json.dumps(body).encode()
  request = urllib.request.Request(url + "/retrieve", data=data, method="POST",
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_scored_results_follow_search_r1_shape(bm25_server):
  status, payload = post(bm25_server.url, {
      "queries": ["tower in Paris", "monument Berlin"], "topk": 2, "return_scores": True})
  assert status == 200
  first, second = payload["result"]
  assert first[0]["document"] == {
      "id": "0",
      "contents": '"Eiffel Tower"\nThe Eiffel Tower is a wrought-iron lattice tower in Paris.'}
  assert second[0]["document"]["id"] == "1"
  assert len(first) <= 2 and len(second) <= 2
  scores = [hit["score"] for hit in first]
  assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_unscored_results_are_bare_rows_and_title_text_rows_are_converted(bm25_server):
  status, payload = post(bm25_server.url, {"queries": ["amphitheatre Rome"], "topk": 1})
  assert status == 200
  assert payload["result"] == [[{
      "id": "2",
      "contents": '"Colosseum"\nThe Colosseum is an oval amphitheatre in the centre of Rome.'}]]


def test_default_topk_and_unknown_words(bm25_server):
  # The first query matches all five documents; with no topk the server's default (3) applies.
  status, payload = post(bm25_server.url, {
      "queries": ["tower Berlin Rome film", "zzzqqq"], "return_scores": True})
  assert status == 200
  assert len(payload["result"][0]) == server_lib.DEFAULT_TOPK
  assert payload["result"][1] == []  # no shared term: nothing, not arbitrary documents


def test_empty_query_list(bm25_server):
  assert post(bm25_server.url, {"queries": []}) == (200, {"result": []})


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"topk": 3}).encode(), 'missing "queries"'),
    (json.dumps({"queries": "one string"}).encode(), "list of strings"),
    (json.dumps({"queries": ["a", 3]}).encode(), "list of strings"),
    (json.dumps({"queries": ["a"], "topk": 0}).encode(), '"topk"'),
    (json.dumps({"queries": ["a"], "topk": 1000}).encode(), '"topk"'),
    (json.dumps({"queries": ["a"], "topk": True}).encode(), '"topk"'),
    (json.dumps({"queries": ["a"], "return_scores": "yes"}).encode(), '"return_scores"'),
])
def test_malformed_requests_get_400_with_reason(bm25_server, body, fragment):
  status, payload = post(bm25_server.url, body, raw=True)
  assert status == 400
  assert fragment in payload["error"]


def test_unknown_path_and_health(bm25_server):
  with urllib.request.urlopen(bm25_server.url + "/health", timeout=5) as response:
    assert json.loads(response.read()) == {"status": "ok", "num_docs": 5}
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(bm25_server.url + "/search", data=b"{}", timeout=5)
  assert e.value.code == 404


def test_corpus_rejects_rows_without_text(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"contents": "\\"A\\"\\nok"}\n{"title": "B"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match="line 1"):
    load_corpus(path)


def test_in_process_retriever_matches_the_server(corpus_path, bm25_server):
  passages = BM25Retriever.from_jsonl(corpus_path).retrieve(["Greenwich Village director"], 1)
  assert passages[0][0].title == "Adriana Trigiani"
  status, payload = post(bm25_server.url, {"queries": ["Greenwich Village director"], "topk": 1})
  assert payload["result"][0][0]["contents"] == passages[0][0].contents


def test_format_passages_is_search_r1_doc_lines():
  passages = [Passage('"Eiffel Tower"\nA tower.'), Passage('"Louvre"\nA museum.\nIn Paris.')]
  assert format_passages(passages) == (
      'Doc 1(Title: "Eiffel Tower") A tower.\n'
      'Doc 2(Title: "Louvre") A museum.\nIn Paris.\n')
  assert passages[1].title == "Louvre" and passages[1].text == "A museum.\nIn Paris."


def test_main_rejects_missing_corpus_argument():
  with pytest.raises(SystemExit):
    server_lib.main([])
