"""Run paths given as gs:// URLs stay URLs: files land in the bucket, never in ./gs:/... locally.

`fake_gcs` swaps every etils.epath backend (`epath.testing.mock_epath`) for one that maps
`gs://bucket/...` onto a temporary directory and leaves local paths alone. Code that writes a gs://
path through epath lands in that directory; code that turns the URL into a local path
(`os.path.abspath`, `os.makedirs`, `open`) either fails (no such local file) or creates
`gs:/bucket/...` under the current directory, which every test checks stays empty.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from memtrain_jax import metrics as metrics_lib
from memtrain_jax import models
from memtrain_jax.data.stream import DocumentStream, write_single_shard

_GS = "gs://"


@dataclasses.dataclass
class FakeGcs:
  root: pathlib.Path  # what gs:// maps to: gs://bucket/x is root / "bucket" / "x"
  cwd: pathlib.Path  # the test's working directory, which must stay empty
  opened: list[tuple[str, str]]  # (gs:// path, mode) of every open

  def local(self, url: str) -> pathlib.Path:
    assert url.startswith(_GS)
    return self.root / url[len(_GS):]

  def files(self, url: str) -> set[str]:
    base = self.local(url)
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}

  def assert_cwd_untouched(self) -> None:
    assert sorted(os.listdir(self.cwd)) == [], "a gs:// path was written as a local path"


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  root = tmp_path / "gcs"
  (root / "bucket").mkdir(parents=True)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # Model copies of gs:// paths go to the system temp dir: keep them in this test's directory.
  (tmp_path / "tmp").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  fake = FakeGcs(root=root, cwd=cwd, opened=[])

  def to_local(path):
    text = os.fspath(path)
    return str(root / text[len(_GS):]) if text.startswith(_GS) else path

  def to_url(path):
    text = os.fspath(path)
    prefix = str(root) + os.sep
    return _GS + text[len(prefix):].replace(os.sep, "/") if text.startswith(prefix) else text

  def one_path(fn, path, *args, **kwargs):
    return fn(to_local(path), *args, **kwargs)

  def two_paths(fn, path, dst, *args, **kwargs):
    return fn(to_local(path), to_local(dst), *args, **kwargs)

  def open_(fn, path, mode):
    if os.fspath(path).startswith(_GS):
      fake.opened.append((os.fspath(path), mode))
    return fn(to_local(path), mode)

  def glob(fn, pattern):
    return [to_url(p) for p in fn(to_local(pattern))]

  def walk(fn, top, **kwargs):
    for dirpath, dirs, files in fn(to_local(top), **kwargs):
      yield to_url(dirpath), dirs, files

  with epath_testing.mock_epath(
      open=open_, exists=one_path, isdir=one_path, listdir=one_path, makedirs=one_path,
      mkdir=one_path, remove=one_path, rmtree=one_path, stat=one_path, glob=glob, walk=walk,
      rename=two_paths, replace=two_paths, copy=two_paths):
    yield fake
  fake.assert_cwd_untouched()


def test_fake_gcs_maps_urls_into_the_bucket(fake_gcs):
  path = epath.Path("gs://bucket/probe/x.txt")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("hello")
  assert (fake_gcs.root / "bucket" / "probe" / "x.txt").read_text() == "hello"
  assert path.read_text() == "hello" and path.exists()
  fake_gcs.assert_cwd_untouched()


# ----------------------------------------------------------------------------------------------
# Metrics and rollout dumps.


def test_metrics_writer_writes_into_the_bucket(fake_gcs, monkeypatch):
  import tensorboardX

  logdirs = []

  class FakeSummaryWriter:  # tensorboardX would talk to real GCS for a gs:// logdir
    def __init__(self, logdir):
      logdirs.append(logdir)
      self.scalars = []

    def add_scalar(self, name, value, step):
      self.scalars.append((name, value, step))

    def add_text(self, *args):
      pass

    def flush(self):
      pass

    def close(self):
      pass

  monkeypatch.setattr(tensorboardX, "SummaryWriter", FakeSummaryWriter)
  url = "gs://bucket/run"
  with metrics_lib.MetricsWriter(url, total_steps=3, console=False) as writer:
    writer.write(1, {"loss": 1.0, "time/step": 2.0}, tokens=10)
    # Visible after each step, not only on close (a crash must not lose the log).
    lines = fake_gcs.local(url + "/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]
    writer.write(2, {"loss": 0.5})
  assert logdirs == ["gs://bucket/run/tensorboard"]
  assert str(writer.workdir) == url

  # A resumed run continues the same file (GCS objects cannot be appended to).
  with metrics_lib.MetricsWriter(epath.Path(url), total_steps=3, console=False,
                                 tensorboard=False) as writer:
    writer.write(3, {"loss": 0.25})
  lines = fake_gcs.local(url + "/metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
  assert json.loads(lines[0])["throughput/tokens_per_s"] == 5.0
  assert fake_gcs.files(url) == {"metrics.jsonl"}
  fake_gcs.assert_cwd_untouched()


def test_dump_rollouts_writes_into_the_bucket(fake_gcs):
  example = metrics_lib.RolloutExample(document="Alpha beta. " * 50, problem="Which [MASK]?",
                                       memories=["seen alpha"], answer="\\boxed{alpha}",
                                       gold="alpha", reward=1.0)
  path = metrics_lib.dump_rollouts("gs://bucket/run", 7, [example, example], max_examples=1)
  assert path == "gs://bucket/run/rollouts/step_000007.txt"
  assert fake_gcs.files("gs://bucket/run") == {"rollouts/step_000007.txt"}
  text = fake_gcs.local(path).read_text()
  assert text.count("step 7, rollout") == 1 and "final answer:\n\\boxed{alpha}" in text
  fake_gcs.assert_cwd_untouched()


# ----------------------------------------------------------------------------------------------
# Data sets.


def test_document_stream_reads_a_data_dir_in_the_bucket(fake_gcs):
  rows = [{"id": f"d{i}", "text": f"document {i} \u00e9", "chunks": [f"c{i}"]} for i in range(5)]
  stats = write_single_shard(rows, "gs://bucket/data", {"task": "test"})
  assert stats == {"documents": 5, "task": "test"}
  assert fake_gcs.files("gs://bucket/data") == {"documents-00000.jsonl", "stats.json"}
  assert json.loads(fake_gcs.local("gs://bucket/data/stats.json").read_text())["documents"] == 5

  stream = DocumentStream("gs://bucket/data", shuffle=False)
  assert len(stream) == 5
  assert [next(stream)["id"] for _ in range(7)] == ["d0", "d1", "d2", "d3", "d4", "d0", "d1"]

  shuffled = DocumentStream(epath.Path("gs://bucket/data"), seed=3)
  first = [next(shuffled) for _ in range(3)]
  resumed = DocumentStream("gs://bucket/data", seed=0)
  resumed.restore(shuffled.state())
  assert [next(resumed) for _ in range(4)] == [next(shuffled) for _ in range(4)]
  assert sorted(d["id"] for d in first) != [] and first[0]["text"].endswith("\u00e9")
  fake_gcs.assert_cwd_untouched()


def test_built_and_task_data_sets_in_the_bucket(fake_gcs):
  from memtrain_jax.agent.search_env import SearchTask
  from memtrain_jax.data.entities import RuleEntityExtractor
  from memtrain_jax.data.pipeline import build_dataset
  from memtrain_jax.data.tokens import RegexTokenizer, TokenCounter
  from memtrain_jax.tasks import longqa, searchqa
  from tests.data.test_pipeline import small_config

  report = build_dataset(small_config(num_documents=2), "gs://bucket/built",
                         TokenCounter(RegexTokenizer()), RuleEntityExtractor())
  assert {"documents-00000.jsonl", "stats.json", "stats.md", "config.json"} <= \
      fake_gcs.files("gs://bucket/built")
  assert json.loads(fake_gcs.local("gs://bucket/built/stats.json").read_text()) == report
  built = DocumentStream("gs://bucket/built", shuffle=False)
  assert len(built) == report["documents"] == 2 and "chunks" in next(built)

  tasks = [SearchTask(("q1", "q2"), (("a1",), ("a2",)), task_id="t0")]
  searchqa.write_tasks(tasks, "gs://bucket/search", {"source": "test"})
  assert searchqa.task_from_row(next(DocumentStream("gs://bucket/search"))) == tasks[0]

  documents = [{"id": "hqa-0", "problem": "q", "chunks": ["a", "b"], "answer": "x"}]
  assert str(longqa.write_documents(documents, "gs://bucket/longqa")) == "gs://bucket/longqa"
  stats = json.loads(fake_gcs.local("gs://bucket/longqa/stats.json").read_text())
  assert stats["chunks_max"] == 2 and next(DocumentStream("gs://bucket/longqa"))["id"] == "hqa-0"
  fake_gcs.assert_cwd_untouched()


# ----------------------------------------------------------------------------------------------
# Models.


def _tiny_model(tokenizer):
  config = models.ModelConfig(family="llama", vocab_size=len(tokenizer), hidden_size=32,
                              intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=8, rope_theta=10000.0, tie_embeddings=True,
                              bos_token_id=tokenizer.bos_token_id, eos_token_ids=(2,))
  return config, models.init_params(config, seed=1, scale=0.05)


def test_save_and_load_pretrained_through_the_bucket(fake_gcs, bundled_model_path):
  tokenizer = models.load_tokenizer(bundled_model_path)
  config, params = _tiny_model(tokenizer)
  url = "gs://bucket/export"
  assert models.save_pretrained(config, params, tokenizer, url) == url
  files = fake_gcs.files(url)
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
  assert json.loads(fake_gcs.local(url + "/config.json").read_text())["hidden_size"] == 32

  cache = pathlib.Path(tempfile.gettempdir()) / "memtrain_model_cache"
  assert models.checkpoint_kind(url) == "hf"
  assert not cache.exists()  # the kind is read in the bucket: nothing copied

  loaded_config, loaded = models.load_pretrained(url)
  assert loaded_config.hidden_size == 32 and loaded_config.num_layers == 2
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               loaded, params)
  assert cache.is_dir() and len(list(cache.iterdir())) == 1  # one local copy of the URL

  reloaded = models.load_tokenizer(url)
  assert reloaded.encode("Hello memory agent") == tokenizer.encode("Hello memory agent")
  assert reloaded.chat_template == tokenizer.chat_template
  # The weights were copied once: the tokenizer load reused the local copy.
  assert fake_gcs.opened.count((url + "/model.safetensors", "rb")) == 1

  # A changed model at the same URL is copied again, not served stale from the cache.
  _, other = _tiny_model(tokenizer)
  other = dict(other, final_norm=other["final_norm"] * 2)
  models.save_pretrained(config, other, tokenizer, url)
  os.utime(fake_gcs.local(url + "/model.safetensors"), (1, 1))
  _, loaded_again = models.load_pretrained(url)
  np.testing.assert_array_equal(np.asarray(loaded_again["final_norm"]),
                                np.asarray(other["final_norm"]))
  fake_gcs.assert_cwd_untouched()


def test_checkpoint_kind_of_urls(fake_gcs):
  (fake_gcs.root / "bucket" / "m.gguf").write_bytes(b"GGUF" + bytes(60))
  (fake_gcs.root / "bucket" / "notes.txt").write_text("hello")
  (fake_gcs.root / "bucket" / "empty").mkdir()
  assert models.checkpoint_kind("gs://bucket/m.gguf") == "gguf"
  with pytest.raises(ValueError, match="neither a Hugging Face directory nor a GGUF"):
    models.checkpoint_kind("gs://bucket/notes.txt")
  with pytest.raises(ValueError, match="without config.json"):
    models.checkpoint_kind("gs://bucket/empty")
  with pytest.raises(FileNotFoundError, match="gs://bucket/missing"):
    models.checkpoint_kind("gs://bucket/missing")
  with pytest.raises(FileNotFoundError, match="gs://bucket/missing"):
    models.load_pretrained("gs://bucket/missing")
  fake_gcs.assert_cwd_untouched()
