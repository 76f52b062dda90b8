"""The sampler on a tiny random decoder: log-probs, greedy, stops, knobs, compiles, sharing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models
from memtrain_jax.sampling import CompileCounter, Sampler, SamplerConfig, truncate_logits
from memtrain_jax.sampling.sampler import resolve_cache_dtype
from tests.rollout_fixtures import IdTokenizer, random_prompts, tiny_config, tiny_params

CONFIG = tiny_config()
SAMPLER_CONFIG = SamplerConfig(prompt_buckets=(16, 32), batch_buckets=(1, 2, 4, 8),
                               max_new_tokens=10)
LENGTHS = [5, 9, 14, 3]


@pytest.fixture(scope="module")
def params():
  return tiny_params(CONFIG)


@pytest.fixture(scope="module")
def sampler():
  return Sampler(CONFIG, IdTokenizer(), SAMPLER_CONFIG)


def _policy_logprobs(params, prompt, completion):
  full = jnp.asarray(np.concatenate([prompt, completion])[None])
  logp = np.asarray(jax.nn.log_softmax(models.forward(CONFIG, params, full), axis=-1))[0]
  rows = logp[len(prompt) - 1:len(prompt) - 1 + len(completion)]
  return rows, rows[np.arange(len(completion)), completion]


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.0, 1.0, 0), (1.3, 0.9, 20)])
def test_logprobs_equal_a_fresh_forward(params, sampler, temperature, top_p, top_k):
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS)
  out = sampler.generate(params, prompts, num_samples=2, temperature=temperature, top_p=top_p,
                         top_k=top_k, seed=1)
  assert len(out) == 8 and out.lengths.min() >= 1
  for r in range(8):
    rows, ref = _policy_logprobs(params, prompts[r // 2], out.tokens[r])
    np.testing.assert_array_less(np.abs(ref - out.logprobs[r]), 1e-4)
    if temperature == 0.0:
      np.testing.assert_array_equal(rows.argmax(-1), out.tokens[r])  # greedy = argmax of policy
      np.testing.assert_array_equal(out.sampling_logprobs[r], 0.0)
    else:
      # The sampling distribution: temperature, then top-k, then top-p, renormalised.
      scaled = truncate_logits(jnp.asarray(rows / temperature * 1.0), top_p, top_k)
      q = np.asarray(jax.nn.log_softmax(scaled, axis=-1))
      want = q[np.arange(len(out.tokens[r])), out.tokens[r]]
      np.testing.assert_allclose(out.sampling_logprobs[r], want, atol=1e-4)
      assert np.isfinite(out.sampling_logprobs[r]).all()


@pytest.mark.parametrize("cache_dtype,decode_attention,resolved", [
    ("auto", "auto", jnp.bfloat16), ("auto", "xla", np.float32), ("float32", "auto", np.float32),
    ("bfloat16", "xla", jnp.bfloat16)])
def test_bf16_rollouts_on_the_compute_copy_match_a_bf16_forward(params, cache_dtype,
                                                                decode_attention, resolved):
  """Mixed precision as the trainer samples: f32 master weights, their bf16 copy
  (`models.compute_params`), a KV cache in bf16 (the CPU default with the decode-attention
  kernel) or f32 (without it), the kernel's attention or XLA's. Log-probs match a fresh bf16
  forward over prompt + completion to bf16 accuracy, and greedy tokens are its argmax where the
  top two are apart."""
  mixed = CONFIG.replace(compute_dtype="bfloat16")
  copy = models.compute_params(mixed, params)
  sampler16 = Sampler(mixed, IdTokenizer(),
                      dataclasses.replace(SAMPLER_CONFIG, cache_dtype=cache_dtype,
                                          decode_attention=decode_attention))
  assert sampler16.cache_dtype == np.dtype(resolved)
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS)
  out = sampler16.generate(copy, prompts, temperature=0.0)
  errors = []
  for r, prompt in enumerate(prompts):
    full = jnp.asarray(np.concatenate([prompt, out.tokens[r]])[None])
    logp = np.asarray(jax.nn.log_softmax(models.forward(mixed, params, full), axis=-1))[0]
    rows = logp[len(prompt) - 1:len(prompt) - 1 + len(out.tokens[r])]
    errors.append(np.abs(rows[np.arange(len(out.tokens[r])), out.tokens[r]] - out.logprobs[r]))
    top2 = np.sort(rows, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1
    np.testing.assert_array_equal(rows.argmax(-1)[clear], out.tokens[r][clear])
  # bf16 rounding noise: decode and the full forward round in different orders (other matmul
  # shapes and kernels). Measured here: mean 0.017 / max 0.12 with a bf16 cache, 0.020 / 0.21
  # with an f32 cache; the same noise against the f32 model is mean 0.035. A wrong attention
  # mask or position moves the mean by far more.
  errors = np.concatenate(errors)
  assert errors.mean() < 0.03 and errors.max() < 0.3, (errors.mean(), errors.max())


def test_cache_dtype_resolution():
  mixed = CONFIG.replace(compute_dtype="bfloat16")
  assert resolve_cache_dtype("auto", mixed, "cpu") == np.float32  # in-place writes on CPU
  assert resolve_cache_dtype("auto", mixed, "cpu", kernel_writes=True) == jnp.bfloat16
  assert resolve_cache_dtype("auto", mixed, "gpu") == jnp.bfloat16
  assert resolve_cache_dtype("auto", CONFIG, "cpu") == np.float32
  assert resolve_cache_dtype("bfloat16", CONFIG, "cpu") == jnp.bfloat16
  for bad in ("int8", "fp32"):
    with pytest.raises(ValueError, match="SamplerConfig.cache_dtype='.*'; use one of 'auto'"):
      resolve_cache_dtype(bad, CONFIG, "cpu")
  with pytest.raises(ValueError, match="SamplerConfig.cache_dtype"):
    Sampler(CONFIG, IdTokenizer(), SamplerConfig(cache_dtype="int8"))


@pytest.mark.parametrize("setting", ["decode_attention", "decode_matmul", "prefill_matmul"])
def test_the_cpu_kernels_change_no_completion(params, setting):
  """A CPU kernel (attention, or matmuls over packed weights in decode or prefill) or XLA: the
  same greedy tokens, and log-probs and sampled tokens as close as their float32 sums."""
  with_kernel = Sampler(CONFIG, IdTokenizer(), SAMPLER_CONFIG)
  with_xla = Sampler(CONFIG, IdTokenizer(), dataclasses.replace(SAMPLER_CONFIG, **{setting: "xla"}))
  assert with_kernel.attention_kernel is not None
  assert with_kernel.decode_matmul is not None and with_kernel.prefill_matmul is not None
  assert (with_xla.attention_kernel is None) == (setting == "decode_attention")
  assert (with_xla.decode_matmul is None) == (setting == "decode_matmul")
  assert (with_xla.prefill_matmul is None) == (setting == "prefill_matmul")
  assert with_xla.packed_weights is not None  # one of the two programs still packs
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS, seed=5)
  for temperature in (0.0, 1.0):
    a = with_kernel.generate(params, prompts, num_samples=2, temperature=temperature, seed=1)
    b = with_xla.generate(params, prompts, num_samples=2, temperature=temperature, seed=1)
    for ta, tb, la, lb in zip(a.tokens, b.tokens, a.logprobs, b.logprobs):
      np.testing.assert_array_equal(ta, tb)
      np.testing.assert_allclose(la, lb, atol=1e-5)


def test_decode_weights_are_packed_once_per_parameters(params):
  sampler = Sampler(CONFIG, IdTokenizer(), SAMPLER_CONFIG)
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS, seed=6)
  for _ in range(2):
    sampler.generate(params, prompts, num_samples=2, temperature=1.0, seed=1)
  assert sampler.packed_weights.packs == 1
  new_params = jax.tree.map(lambda x: x * 1.01, params)
  sampler.generate(new_params, prompts, temperature=0.0)
  assert sampler.packed_weights.packs == 2
  sampler.release_packed_weights()  # freed: the same parameters are packed again
  sampler.generate(new_params, prompts, temperature=0.0)
  assert sampler.packed_weights.packs == 3
  assert [p[0] for p in sampler.programs_built].count("pack") == 1  # compiled once


def test_changing_knobs_recompiles_nothing(params, sampler):
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS)
  sampler.generate(params, prompts, temperature=1.0)
  before = sampler.num_compiles()
  with CompileCounter() as counter:
    greedy = sampler.generate(params, prompts, temperature=0.0)
    sampler.generate(params, prompts, temperature=0.7, top_p=0.8, seed=5)
    sampler.generate(params, prompts, temperature=1.5, top_k=3, max_new_tokens=4, seed=9)
    top1 = sampler.generate(params, prompts, temperature=0.9, top_k=1, seed=2)
  assert counter.count == 0, counter.names
  assert sampler.num_compiles() == before
  for a, b in zip(greedy.tokens, top1.tokens):
    np.testing.assert_array_equal(a, b)  # top-k = 1 is greedy


def test_second_identical_call_compiles_nothing(params):
  # decode_step_tokens=0: the two prompt buckets run as two micro-batches, not one padded to 32.
  sampler = Sampler(CONFIG, IdTokenizer(), dataclasses.replace(SAMPLER_CONFIG,
                                                               decode_step_tokens=0))
  prompts = random_prompts(CONFIG.vocab_size, [4, 20, 7])  # two prompt buckets
  with CompileCounter() as first:
    a = sampler.generate(params, prompts, num_samples=2, seed=3)
  # 2 buckets x (prefill + decode) and the decode weights' packing; nothing else compiled (host
  # work stays in numpy).
  assert sampler.num_compiles() == 5 and first.count >= 5
  with CompileCounter() as second:
    b = sampler.generate(params, prompts, num_samples=2, seed=3)
  assert second.count == 0, second.names
  assert sampler.num_compiles() == 5
  for x, y in zip(a.tokens, b.tokens):
    np.testing.assert_array_equal(x, y)  # same seed, same samples


def test_stop_token_belongs_to_the_completion(params, sampler):
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS, seed=4)
  free = sampler.generate(params, prompts, temperature=0.0)
  row = int(np.argmax(free.lengths))
  stop_at = 3
  stop_id = int(free.tokens[row][stop_at])
  first = int(np.flatnonzero(free.tokens[row] == stop_id)[0])
  stopping = Sampler(CONFIG, IdTokenizer(), SamplerConfig(
      prompt_buckets=(16, 32), batch_buckets=(1, 2, 4, 8), max_new_tokens=10,
      stop_token_ids=(stop_id,)))
  out = stopping.generate(params, prompts, temperature=0.0)
  assert out.stopped[row] and out.lengths[row] == first + 1
  np.testing.assert_array_equal(out.tokens[row], free.tokens[row][:first + 1])
  assert out.logprobs[row].shape == (first + 1,)
  np.testing.assert_array_equal(out.logprobs[row], free.logprobs[row][:first + 1])


def test_stop_string_cuts_after_its_last_token(params, sampler):
  prompts = random_prompts(CONFIG.vocab_size, LENGTHS, seed=5)
  free = sampler.generate(params, prompts, temperature=0.0)
  row = int(np.argmax(free.lengths))
  a, b = free.tokens[row][2:4]
  stopping = Sampler(CONFIG, IdTokenizer(), SamplerConfig(
      prompt_buckets=(16, 32), batch_buckets=(1, 2, 4, 8), max_new_tokens=10,
      stop_strings=(f"{a} {b}",)))
  out = stopping.generate(params, prompts, temperature=0.0)
  toks = out.tokens[row]
  assert out.stopped[row] and len(toks) <= 4
  np.testing.assert_array_equal(toks[-2:], [a, b])
  np.testing.assert_array_equal(toks, free.tokens[row][:len(toks)])


def test_pad_equal_to_eos_is_trained_and_never_masks(params):
  # Make eos (= pad = 2) the greedy choice everywhere: the completion is exactly [eos].
  boosted = dict(params, lm_head=params["lm_head"].at[2].add(50.0))
  sampler = Sampler(CONFIG, IdTokenizer(), SAMPLER_CONFIG)
  prompts = [np.asarray([2, 2, 7, 9, 2, 11], np.int32), np.asarray([5, 6], np.int32)]
  out = sampler.generate(boosted, prompts, temperature=0.0)
  for r in range(2):
    np.testing.assert_array_equal(out.tokens[r], [2])
    assert out.stopped[r] and out.lengths[r] == 1
    _, ref = _policy_logprobs(boosted, prompts[r], out.tokens[r])
    np.testing.assert_allclose(out.logprobs[r], ref, atol=1e-4)
  # The pad id inside a prompt is a real token: the first prompt's logits see the leading 2s.
  free = sampler.generate(params, prompts, temperature=0.0, max_new_tokens=6)
  _, ref = _policy_logprobs(params, prompts[0], free.tokens[0])
  np.testing.assert_allclose(free.logprobs[0], ref, atol=1e-4)


def test_prefix_sharing_prefills_once_and_changes_nothing(params):
  prompts = random_prompts(CONFIG.vocab_size, [6, 11])
  shared = Sampler(CONFIG, IdTokenizer(), SAMPLER_CONFIG)
  separate = Sampler(CONFIG, IdTokenizer(), SamplerConfig(
      prompt_buckets=(16, 32), batch_buckets=(1, 2, 4, 8), max_new_tokens=10, share_prefix=False))
  a = shared.generate(params, prompts, num_samples=4, temperature=1.0, seed=7)
  b = separate.generate(params, prompts, num_samples=4, temperature=1.0, seed=7)
  for x, y in zip(a.tokens, b.tokens):
    np.testing.assert_array_equal(x, y)
  prefill_a = [p for p in shared.programs_built if p[0] == "prefill"][0]
  prefill_b = [p for p in separate.programs_built if p[0] == "prefill"][0]
  assert prefill_a[1] == (2, 16) and prefill_b[1] == (8, 16)  # unique prompts vs every row
  assert len(set(map(bytes, a.tokens[:4]))) > 1  # the shared samples still differ


def test_prompts_of_two_buckets_merged_or_apart_give_the_same_completions(params):
  # Two prompts of the 16 bucket and two of the 32 bucket: with decode loops costed, one
  # micro-batch padded to 32; with decode_step_tokens=0, one micro-batch per bucket.
  prompts = random_prompts(CONFIG.vocab_size, [5, 20, 9, 30], seed=3)
  runs = {}
  for step_tokens in (64, 0):
    s = Sampler(CONFIG, IdTokenizer(), dataclasses.replace(SAMPLER_CONFIG,
                                                           decode_step_tokens=step_tokens))
    out = s.generate(params, prompts, num_samples=2, temperature=0.0)
    runs[step_tokens] = (out, sorted(p[1] for p in s.programs_built if p[0] == "prefill"))
  assert runs[64][1] == [(4, 32)]
  assert runs[0][1] == [(2, 16), (2, 32)]
  # The plans pad the prompts to different lengths, so prefill's attention reduces over different
  # shapes: float32 differences up to ~1.2e-5 (2-core AMD EPYC Zen 4). A row given another row's
  # prompt or cache would differ by far more than the other log-prob checks' 1e-4.
  for a, b, x, y in zip(runs[64][0].tokens, runs[0][0].tokens, runs[64][0].logprobs,
                        runs[0][0].logprobs):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(x, y, atol=1e-4)


def test_more_rows_than_the_largest_batch_bucket(params, sampler):
  prompts = random_prompts(CONFIG.vocab_size, [4, 7, 9, 12, 5], seed=8)
  together = sampler.generate(params, prompts, num_samples=3, temperature=0.0)  # 15 rows > 8
  assert len(together) == 15
  for i, p in enumerate(prompts):
    alone = sampler.generate(params, [p], temperature=0.0)
    for s in range(3):
      np.testing.assert_array_equal(together.tokens[3 * i + s], alone.tokens[0])


@pytest.mark.parametrize("kind", ["normal", "ties", "minus_inf"])
def test_truncate_logits_matches_a_numpy_reference(kind):
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((5, 40)).astype(np.float32) * 3
  if kind == "ties":  # runs of equal logits, also at the top-k and nucleus thresholds
    logits = rng.integers(-3, 3, size=(5, 40)).astype(np.float32)
  elif kind == "minus_inf":
    logits[rng.random((5, 40)) < 0.3] = -np.inf
    logits[:, 0] = 0.5  # at least one finite logit per row
  for top_p, top_k in [(1.0, 0), (0.7, 0), (1.0, 5), (0.5, 8), (0.01, 0), (1.0, 1), (0.9, 3)]:
    got = np.asarray(truncate_logits(jnp.asarray(logits), np.float32(top_p), np.int32(top_k)))
    for row, g in zip(logits, got):
      # Sort, keep the top k, then the ranks whose top-k mass ranked above is below top_p
      # (top_p = 1: all of them); every logit equal to the last kept one is kept too.
      order = np.argsort(-row, kind="stable")
      kept = order[:top_k if top_k > 0 else 40]
      if top_p < 1.0:
        p = np.exp(row[kept] - row[kept].max())
        p /= p.sum()
        before = np.cumsum(p) - p
        kept = kept[:max(1, int(np.sum(before < top_p)))]
      keep = (row >= row[kept].min()) & np.isfinite(row)
      np.testing.assert_array_equal(np.isfinite(g), keep, err_msg=f"{kind} {top_p} {top_k}")
      np.testing.assert_array_equal(g[keep], row[keep])


def test_bad_arguments_are_refused(params, sampler):
  prompts = random_prompts(CONFIG.vocab_size, [4])
  with pytest.raises(ValueError, match="largest prompt bucket"):
    sampler.generate(params, random_prompts(CONFIG.vocab_size, [33]))
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampler.generate(params, prompts, max_new_tokens=11)
  with pytest.raises(ValueError, match="top_p"):
    sampler.generate(params, prompts, top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    sampler.generate(params, prompts, temperature=-1.0)
