"""Chunks never exceed chunk_size tokens, with plain and HF tokenizers."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from memtrain_jax.data.chunking import chunk_document
from memtrain_jax.data.sources import load_bundled_corpus
from memtrain_jax.data.tokens import RegexTokenizer
from memtrain_jax.data.tokens import TokenCounter

_TEXT = load_bundled_corpus()[1]['text'][:12000] + ' [MASK] wrote [MASK].'


@pytest.fixture(scope='module')
def hf_bpe():
  """A byte-level BPE trained in-process, wrapped as a transformers tokenizer."""
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<s>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator([_TEXT], trainer=trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe,
                                              bos_token='<s>')


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 300), st.integers(0, 8))
def test_regex_chunks_fit_and_concatenate_to_document(chunk_size, backoff):
  counter = TokenCounter(RegexTokenizer())
  chunks = chunk_document(_TEXT, counter, chunk_size, backoff)
  assert ''.join(c.text for c in chunks) == _TEXT
  assert all(counter.count(c.text) <= chunk_size for c in chunks)
  assert sum(c.num_tokens for c in chunks) == counter.count(_TEXT)
  # A cut lands on a word start unless the backoff window had none.
  ids = counter.encode(_TEXT)
  for previous, chunk in zip(chunks, chunks[1:]):
    if not chunk.text[0].isspace():
      window = range(chunk.start_token,
                     max(previous.start_token, chunk.start_token - backoff), -1)
      assert not any(counter.decode([ids[i]])[0].isspace() for i in window)


@pytest.mark.parametrize('chunk_size', [16, 64, 333])
def test_hf_tokenizer_chunks_fit_without_special_tokens(hf_bpe, chunk_size):
  counter = TokenCounter(hf_bpe)
  assert counter.count('hello') == len(hf_bpe.encode('hello',
                                                      add_special_tokens=False))
  chunks = chunk_document(_TEXT, counter, chunk_size, 8)
  assert all(counter.count(c.text) <= chunk_size for c in chunks)
  assert ''.join(c.text for c in chunks) == counter.decode(
      counter.encode(_TEXT))


def test_short_text_is_one_chunk_and_empty_text_none():
  counter = TokenCounter(RegexTokenizer())
  assert [c.text for c in chunk_document('One two.', counter, 10)] == [
      'One two.']
  assert not chunk_document('', counter, 10)
  with pytest.raises(ValueError):
    chunk_document('x', counter, 0)
