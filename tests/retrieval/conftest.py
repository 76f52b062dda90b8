"""A BM25 retrieval server on a loopback port chosen by the OS, for the retrieval tests."""

import json

import pytest

from memtrain_jax.retrieval.bm25 import BM25Retriever
from memtrain_jax.retrieval.server import serving

CORPUS_ROWS = [
    {"id": "0",
     "contents": '"Eiffel Tower"\nThe Eiffel Tower is a wrought-iron lattice tower in Paris.'},
    {"id": "1", "contents": '"Brandenburg Gate"\nThe Brandenburg Gate is a monument in Berlin.'},
    {"title": "Colosseum", "text": "The Colosseum is an oval amphitheatre in the centre of Rome."},
    {"title": "Big Stone Gap (film)",
     "text": "Big Stone Gap is a 2014 romantic comedy film directed by Adriana Trigiani."},
    {"title": "Adriana Trigiani",
     "text": "Adriana Trigiani is an author and film director based in Greenwich Village."},
]


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in CORPUS_ROWS), encoding="utf-8")
  return path


@pytest.fixture(scope="session")
def bm25_server(corpus_path):
  with serving(BM25Retriever.from_jsonl(corpus_path)) as server:
    yield server
