"""The HTTP client: correct passages from a live server, and fast, clear errors otherwise."""

import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from memtrain_jax.retrieval.client import (
    RetrievalClient, RetrievalProtocolError, RetrievalTimeoutError, RetrievalUnavailableError)
from memtrain_jax.retrieval.server import start_in_thread


def test_retrieve_returns_passages_per_query(bm25_server):
  client = RetrievalClient(bm25_server.url, timeout=5)
  by_query = client.retrieve(["wrought-iron tower", "romantic comedy Big Stone Gap"], topk=2)
  assert [p.title for p in by_query[0]][:1] == ["Eiffel Tower"]
  assert by_query[1][0].title == "Big Stone Gap (film)"
  assert by_query[1][0].doc_id == "3"
  assert all(p.score > 0 for hits in by_query for p in hits)
  assert client.retrieve([], topk=2) == []


def test_full_endpoint_url_is_accepted(bm25_server):
  client = RetrievalClient(bm25_server.url + "/retrieve/", timeout=5)
  assert client.retrieve(["Colosseum"], topk=1)[0][0].title == "Colosseum"


def test_bad_request_is_a_protocol_error_without_retries(bm25_server):
  client = RetrievalClient(bm25_server.url, timeout=5, retries=3, backoff=1.0)
  start = time.monotonic()
  with pytest.raises(RetrievalProtocolError, match="HTTP 400"):
    client.retrieve(["x"], topk=0)
  assert time.monotonic() - start < 1.0  # a 4xx is not retried


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_server_down_fails_fast_with_how_to_start():
  url = f"http://127.0.0.1:{free_port()}"
  client = RetrievalClient(url, timeout=5, retries=2, backoff=0.05)
  start = time.monotonic()
  with pytest.raises(RetrievalUnavailableError) as e:
    client.retrieve(["anything"])
  assert time.monotonic() - start < 2.0
  message = str(e.value)
  assert url in message
  assert "python -m memtrain_jax.retrieval.server" in message
  assert "3 attempts" in message


class _FixedHandler(BaseHTTPRequestHandler):
  """Answers every POST after `delay` seconds with `body`."""
  delay = 0.0
  body = b""

  def do_POST(self):  # noqa: N802
    self.rfile.read(int(self.headers["Content-Length"]))
    time.sleep(self.delay)
    self.send_response(200)
    self.send_header("Content-Length", str(len(self.body)))
    self.end_headers()
    self.wfile.write(self.body)

  def log_message(self, *args):
    pass


@pytest.fixture
def fake_server():
  servers = []

  def make(delay, body):
    handler = type("Handler", (_FixedHandler,), {"delay": delay, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    start_in_thread(server)
    servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}"

  yield make
  for server in servers:
    server.shutdown()
    server.server_close()


def test_slow_server_times_out(fake_server):
  url = fake_server(delay=3.0, body=b'{"result": [[]]}')
  client = RetrievalClient(url, timeout=0.3, retries=1, backoff=0.0)
  start = time.monotonic()
  with pytest.raises(RetrievalTimeoutError, match="did not answer within 0.3s"):
    client.retrieve(["q"])
  assert time.monotonic() - start < 1.5  # two attempts of 0.3 s, not the server's 3 s


@pytest.mark.parametrize("body, fragment", [
    (b"<html>not json</html>", "malformed"),
    (b'{"results": []}', '"result"'),
    (b'{"result": [[], []]}', "expected 1 result lists"),
    (b'{"result": [[{"document": {"title": "no contents"}, "score": 1.0}]]}', "contents"),
])
def test_malformed_answers_are_protocol_errors(fake_server, body, fragment):
  client = RetrievalClient(fake_server(delay=0.0, body=body), timeout=2, retries=0)
  with pytest.raises(RetrievalProtocolError, match=fragment):
    client.retrieve(["q"])


def test_unscored_rows_are_accepted(fake_server):
  url = fake_server(delay=0.0, body=b'{"result": [[{"id": 7, "contents": "\\"T\\"\\nbody"}]]}')
  (passage,), = RetrievalClient(url, timeout=2).retrieve(["q"])
  assert (passage.title, passage.text, passage.doc_id, passage.score) == ("T", "body", "7", None)
