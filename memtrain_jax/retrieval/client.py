"""Client for a Search-R1-protocol retrieval server (ours or Search-R1's own e5/FAISS one).

Every failure raises a `RetrievalError` that names the URL and says how to start a server, and
every call is bounded: each attempt has a socket timeout, and failed attempts are retried at most
`retries` times with exponential backoff, so a dead or stuck server cannot hang a rollout.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from memtrain_jax.retrieval.passage import Passage

START_HINT = ("start one with `python -m memtrain_jax.retrieval.server --corpus CORPUS.jsonl "
              "--port 8000` (or Search-R1's retrieval_launch.sh)")


class RetrievalError(RuntimeError):
  """The retrieval server could not answer a request."""


class RetrievalUnavailableError(RetrievalError):
  """Nothing answered at the URL (refused, unreachable or 5xx), even after retries."""


class RetrievalTimeoutError(RetrievalError):
  """The server accepted the request but did not answer within the timeout."""


class RetrievalProtocolError(RetrievalError):
  """The server answered, but rejected the request (4xx) or sent something malformed."""


def _retrieve_url(url: str) -> str:
  """Accepts both the base URL and the full endpoint (MEM1 configs give `.../retrieve`)."""
  url = url.rstrip("/")
  return url if url.endswith("/retrieve") else url + "/retrieve"


def _passage_from_item(item: object) -> Passage:
  """Parses one hit, with scores ({"document": row, "score": s}) or without (the bare row)."""
  if not isinstance(item, dict):
    raise ValueError(f"a hit must be an object, got {type(item).__name__}")
  score = None
  row = item
  if "document" in item:
    row, score = item["document"], item.get("score")
    if score is not None and not isinstance(score, (int, float)):
      raise ValueError(f"score must be a number, got {score!r}")
  if not isinstance(row, dict) or not isinstance(row.get("contents"), str):
    raise ValueError(f'a document needs a string "contents", got {row!r:.200}')
  doc_id = row.get("id")
  return Passage(contents=row["contents"], score=None if score is None else float(score),
                 doc_id=None if doc_id is None else str(doc_id))


def parse_retrieve_response(payload: object, num_queries: int) -> list[list[Passage]]:
  if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
    raise ValueError('expected an object with a "result" list')
  result = payload["result"]
  if len(result) != num_queries:
    raise ValueError(f"expected {num_queries} result lists, got {len(result)}")
  passages = []
  for hits in result:
    if not isinstance(hits, list):
      raise ValueError(f"each query's result must be a list, got {type(hits).__name__}")
    passages.append([_passage_from_item(item) for item in hits])
  return passages


class RetrievalClient:
  """`retrieve(queries, topk) -> list[list[Passage]]` over HTTP.

  Worst case before an error: (retries + 1) * timeout + backoff * (2**retries - 1) seconds.
  Only connection failures, timeouts and 5xx answers are retried; a 4xx or a malformed answer
  will not improve by asking again.
  """

  def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0,
               retries: int = 2, backoff: float = 0.5):
    if timeout <= 0:
      raise ValueError(f"timeout must be > 0, got {timeout}")
    if retries < 0 or backoff < 0:
      raise ValueError(f"retries and backoff must be >= 0, got {retries} and {backoff}")
    self.url = _retrieve_url(url)
    self.timeout = timeout
    self.retries = retries
    self.backoff = backoff

  def _post_once(self, body: bytes) -> bytes:
    request = urllib.request.Request(
        self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=self.timeout) as response:
      return response.read()

  def _post(self, body: bytes) -> bytes:
    last_error: RetrievalError | None = None
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff * 2 ** (attempt - 1))
      try:
        return self._post_once(body)
      except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:500]
        if e.code < 500:
          raise RetrievalProtocolError(
              f"retrieval server at {self.url} rejected the request (HTTP {e.code}): {detail}"
          ) from e
        last_error = RetrievalUnavailableError(
            f"retrieval server at {self.url} failed (HTTP {e.code}): {detail}")
      except (TimeoutError, socket.timeout):
        last_error = RetrievalTimeoutError(
            f"retrieval server at {self.url} did not answer within {self.timeout}s; is it "
            f"overloaded or stuck? Raise the timeout, or restart it: {START_HINT}")
      except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
          last_error = RetrievalTimeoutError(
              f"retrieval server at {self.url} did not answer within {self.timeout}s; "
              f"{START_HINT}")
        else:
          last_error = RetrievalUnavailableError(
              f"no retrieval server at {self.url} ({e.reason}); {START_HINT}")
      except (OSError, http.client.HTTPException) as e:
        last_error = RetrievalUnavailableError(
            f"connection to the retrieval server at {self.url} failed ({e}); {START_HINT}")
    assert last_error is not None
    raise type(last_error)(f"{last_error} [gave up after {self.retries + 1} attempts]")

  def retrieve(self, queries: Sequence[str], topk: int = 3) -> list[list[Passage]]:
    queries = list(queries)
    if not queries:
      return []
    body = json.dumps({"queries": queries, "topk": topk, "return_scores": True}).encode("utf-8")
    raw = self._post(body)
    try:
      payload = json.loads(raw)
      return parse_retrieve_response(payload, len(queries))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
      raise RetrievalProtocolError(
          f"retrieval server at {self.url} sent a malformed answer ({e}); is that URL a "
          f"Search-R1-protocol server? {START_HINT}") from e
