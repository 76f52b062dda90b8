"""HTTP retrieval service speaking the Search-R1 / MEM1 protocol, with a BM25 backend.

    python -m memtrain_jax.retrieval.server --corpus corpus.jsonl --port 8000

`POST /retrieve` with `{"queries": [...], "topk": k, "return_scores": bool}` answers
`{"result": [...]}`, one list per query (Search-R1 `search_r1/search/retrieval_server.py`):
- with `return_scores: true`: `[{"document": {"id": ..., "contents": ...}, "score": s}, ...]`;
- otherwise (the default there too): the bare corpus rows `[{"id": ..., "contents": ...}, ...]`.
`topk` may be omitted or null (the server's `--topk`, 3 as in Search-R1's `retriever.topk=3`).
Malformed requests get a 400 with `{"error": "..."}`. `GET /health` reports the corpus size.
Only the standard library's `http.server`, so serving needs no web framework.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memtrain_jax.retrieval.bm25 import BM25Retriever

DEFAULT_TOPK = 3
DEFAULT_MAX_TOPK = 100
MAX_BODY_BYTES = 16 * 1024 * 1024
RETRIEVE_PATH = "/retrieve"
HEALTH_PATH = "/health"

logger = logging.getLogger(__name__)


class RequestError(ValueError):
  """A client mistake; its message goes back in the 400 body."""


def parse_retrieve_request(body: bytes, default_topk: int,
                           max_topk: int) -> tuple[list[str], int, bool]:
  """Validates a /retrieve body; returns (queries, topk, return_scores)."""
  try:
    request = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(f"the body is not valid JSON: {e}") from e
  if not isinstance(request, dict):
    raise RequestError(f"the body must be a JSON object, got {type(request).__name__}")
  if "queries" not in request:
    raise RequestError('missing "queries": expected {"queries": ["..."], "topk": 3}')
  queries = request["queries"]
  if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
    raise RequestError('"queries" must be a list of strings')
  topk = request.get("topk")
  if topk is None:
    topk = default_topk
  # bool is an int subclass; `"topk": true` is a mistake, not k=1.
  if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= max_topk:
    raise RequestError(f'"topk" must be an integer in [1, {max_topk}], got {topk!r}')
  return_scores = request.get("return_scores", False)
  if not isinstance(return_scores, bool):
    raise RequestError(f'"return_scores" must be true or false, got {return_scores!r}')
  return queries, topk, return_scores


def retrieve_response(retriever: BM25Retriever, queries: Sequence[str], topk: int,
                      return_scores: bool) -> dict:
  result = []
  for hits in retriever.search(queries, topk):
    rows = [{"id": doc.doc_id, "contents": doc.contents} for doc, _ in hits]
    if return_scores:
      rows = [{"document": row, "score": score} for row, (_, score) in zip(rows, hits)]
    result.append(rows)
  return {"result": result}


class RetrievalHTTPServer(ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, address: tuple[str, int], retriever: BM25Retriever,
               default_topk: int = DEFAULT_TOPK, max_topk: int = DEFAULT_MAX_TOPK):
    super().__init__(address, RetrievalRequestHandler)
    self.retriever = retriever
    self.default_topk = default_topk
    self.max_topk = max_topk

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}"


class RetrievalRequestHandler(BaseHTTPRequestHandler):
  server: RetrievalHTTPServer

  def _send_json(self, status: HTTPStatus, payload: dict) -> None:
    body = json.dumps(payload).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _send_error(self, status: HTTPStatus, message: str) -> None:
    self._send_json(status, {"error": message})

  def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
    if self.path == HEALTH_PATH:
      self._send_json(HTTPStatus.OK, {"status": "ok", "num_docs": len(self.server.retriever)})
    elif self.path == RETRIEVE_PATH:
      self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"use POST {RETRIEVE_PATH}")
    else:
      self._send_error(HTTPStatus.NOT_FOUND,
                       f"unknown path {self.path!r}; use POST {RETRIEVE_PATH}")

  def do_POST(self) -> None:  # noqa: N802
    if self.path != RETRIEVE_PATH:
      self._send_error(HTTPStatus.NOT_FOUND,
                       f"unknown path {self.path!r}; use POST {RETRIEVE_PATH}")
      return
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      self._send_error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
      return
    if length > MAX_BODY_BYTES:
      self._send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"the body has {length} bytes; the limit is {MAX_BODY_BYTES}")
      return
    body = self.rfile.read(length)
    try:
      queries, topk, return_scores = parse_retrieve_request(
          body, self.server.default_topk, self.server.max_topk)
    except RequestError as e:
      self._send_error(HTTPStatus.BAD_REQUEST, str(e))
      return
    try:
      payload = retrieve_response(self.server.retriever, queries, topk, return_scores)
    except Exception as e:  # A backend failure must answer, not drop the connection.
      logger.exception("retrieval failed")
      self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"retrieval failed: {e}")
      return
    self._send_json(HTTPStatus.OK, payload)

  def log_message(self, format: str, *args) -> None:  # noqa: A002 (base-class signature)
    logger.debug("%s " + format, self.address_string(), *args)


def start_in_thread(server: RetrievalHTTPServer) -> threading.Thread:
  """Serves in a daemon thread; stop with `server.shutdown(); server.server_close()`."""
  thread = threading.Thread(target=server.serve_forever, name="retrieval-server", daemon=True)
  thread.start()
  return thread


@contextlib.contextmanager
def serving(retriever, host: str = "127.0.0.1", port: int = 0, **server_options):
  """Runs a retrieval server in a background thread for the `with` block; yields the server.

  Port 0 lets the OS choose a free port (`server.url` tells which). The server is shut down and
  its socket closed on exit, also when the block raises.
  """
  server = RetrievalHTTPServer((host, port), retriever, **server_options)
  start_in_thread(server)
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()


def build_arg_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m memtrain_jax.retrieval.server",
      description="Serve BM25 retrieval over a JSONL corpus with the Search-R1 /retrieve protocol.")
  parser.add_argument("--corpus", required=True,
                      help='JSONL, one passage a line: {"contents": "\\"Title\\"\\ntext"} or '
                           '{"title": ..., "text": ...}')
  parser.add_argument("--host", default="127.0.0.1",
                      help="bind address (default loopback only; 0.0.0.0 exposes it)")
  parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
  parser.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                      help="passages per query when a request gives no topk")
  parser.add_argument("--max-topk", type=int, default=DEFAULT_MAX_TOPK)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_arg_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  retriever = BM25Retriever.from_jsonl(args.corpus)
  server = RetrievalHTTPServer((args.host, args.port), retriever,
                               default_topk=args.topk, max_topk=args.max_topk)
  logger.info("serving %d passages from %s at %s%s", len(retriever), args.corpus, server.url,
              RETRIEVE_PATH)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logger.info("stopping")
  finally:
    server.server_close()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
