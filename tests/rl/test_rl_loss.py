"""Tests for the GRPO loss: a float64 loop reference and gradient accumulation invariance."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.rl import loss as loss_lib
from memtrain_jax.rl import packing
from memtrain_jax.rl.logprobs import chunked_token_logprobs

EPS_LOW, EPS_HIGH, KL_COEF, NORM_LENGTH = 0.2, 0.28, 0.05, 11


def _f32_exact(x):
  """Values that float32 represents exactly, so packing (f32) loses nothing against the f64 reference."""
  return np.asarray(x, np.float32).astype(np.float64)


def _random_rollout(rng, num_rows=17):
  """Ragged rows plus per-token current and reference log-probs."""
  prompts, completions, old, new, ref = [], [], [], [], []
  for _ in range(num_rows):
    prompts.append(rng.integers(1, 9, rng.integers(1, 6)).astype(np.int32))
    length = int(rng.integers(1, 8))
    completions.append(rng.integers(0, 9, length).astype(np.int32))
    old.append(_f32_exact(-rng.exponential(1.0, length)))
    # Ratios spread over e^(+-0.5 * 2) so both clip sides are hit.
    new.append(_f32_exact(old[-1] + rng.normal(0.0, 0.5, length)))
    ref.append(_f32_exact(old[-1] + rng.normal(0.0, 0.5, length)))
  advantages = _f32_exact(rng.normal(0.0, 1.0, num_rows))
  return prompts, completions, old, new, ref, advantages


def _rows(prompts, completions, logprobs, advantages):
  n = len(prompts)
  return InteractionRows(
      prompt_tokens=prompts, completion_tokens=completions,
      completion_logprobs=[x.astype(np.float32) for x in logprobs],
      sample_id=np.arange(n, dtype=np.int32), group_id=np.zeros(n, np.int32),
      trajectory_id=np.arange(n, dtype=np.int32), step=np.zeros(n, np.int32),
      kind=np.full(n, RowKind.FINAL_ANSWER, np.int8), advantage=advantages.astype(np.float32))


def _reference(old, new, ref, advantages, aggregation, kl_coef, estimator, max_log_ratio=20.0):
  """Loops over rows and tokens in float64; returns (loss, d loss / d new per row, metrics)."""
  row_sums, row_lengths, grads = [], [], []
  clip_low = clip_high = num_tokens = 0
  for old_row, new_row, ref_row, a in zip(old, new, ref, advantages):
    total, row_grad = 0.0, []
    for o, n, r in zip(old_row, new_row, ref_row):
      log_ratio = min(max(n - o, -max_log_ratio), max_log_ratio)
      ratio = math.exp(log_ratio)
      bounded = min(max(ratio, 1 - EPS_LOW), 1 + EPS_HIGH)
      if ratio * a <= bounded * a:  # the unclipped branch is the minimum
        policy, d_policy = -ratio * a, -ratio * a
      else:
        policy, d_policy = -bounded * a, 0.0
      clip_low += ratio < 1 - EPS_LOW and a < 0
      clip_high += ratio > 1 + EPS_HIGH and a > 0
      if estimator == "k1":
        kl, d_kl = n - r, 1.0
      else:
        delta = r - n
        kl, d_kl = math.exp(delta) - delta - 1, -math.exp(delta) + 1
      total += policy + kl_coef * kl
      row_grad.append(d_policy + kl_coef * d_kl)
      num_tokens += 1
    row_sums.append(total)
    row_lengths.append(len(old_row))
    grads.append(np.array(row_grad))
  num_rows = len(row_sums)
  if aggregation == "interaction_mean":
    loss = sum(s / n for s, n in zip(row_sums, row_lengths)) / num_rows
    scales = [1 / (n * num_rows) for n in row_lengths]
  elif aggregation == "token_mean":
    loss = sum(row_sums) / num_tokens
    scales = [1 / num_tokens] * num_rows
  elif aggregation == "sequence_sum":
    loss = sum(row_sums) / num_rows
    scales = [1 / num_rows] * num_rows
  else:
    loss = sum(s / NORM_LENGTH for s in row_sums) / num_rows
    scales = [1 / (NORM_LENGTH * num_rows)] * num_rows
  grads = [g * s for g, s in zip(grads, scales)]
  metrics = {"clip_low": clip_low / num_tokens, "clip_high": clip_high / num_tokens,
             "num_tokens": num_tokens, "num_interactions": num_rows}
  return loss, grads, metrics


def _packed_inputs(rollout, config):
  """Packs the rollout and aligns current and reference log-probs with it via the same packing."""
  prompts, completions, old, new, ref, advantages = rollout
  packed = packing.pack_rows(_rows(prompts, completions, old, advantages), config)
  aligned = {name: packing.pack_rows(_rows(prompts, completions, values, advantages), config).old_logp
             for name, values in (("new", new), ("ref", ref))}
  return packed, aligned


def _unpack_rows(packed_values, packed, rollout):
  """Per-row arrays of packed per-token values on loss slots (row order)."""
  out = []
  for row in range(len(rollout[0])):
    on = (packed.row_index == row) & (packed.loss_mask > 0)
    out.append(np.asarray(packed_values)[on])
  return out


@pytest.mark.parametrize("aggregation", loss_lib.AGGREGATIONS)
@pytest.mark.parametrize("estimator", loss_lib.KL_ESTIMATORS)
def test_loss_and_gradient_match_f64_reference(enable_x64, aggregation, estimator):
  del enable_x64
  rollout = _random_rollout(np.random.default_rng(11))
  packed, aligned = _packed_inputs(rollout, packing.PackingConfig(seq_len=12, micro_batch_size=2))
  assert packed.num_micro_batches > 1
  config = loss_lib.LossConfig(aggregation=aggregation, clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH,
                               kl_coef=KL_COEF, kl_estimator=estimator, norm_length=NORM_LENGTH)

  def total_loss(new_logp):
    terms = None
    for i in range(packed.num_micro_batches):
      micro = loss_lib.ppo_loss_terms(
          new_logp[i], jnp.asarray(packed.old_logp[i], jnp.float64),
          jnp.asarray(packed.advantages[i], jnp.float64), jnp.asarray(packed.loss_mask[i]),
          jnp.asarray(packed.row_num_tokens[i]), config,
          ref_logp=jnp.asarray(aligned["ref"][i], jnp.float64))
      terms = micro if terms is None else loss_lib.add_terms(terms, micro)
    return loss_lib.finalize(terms)

  new_logp = jnp.asarray(aligned["new"], jnp.float64)
  (loss, metrics), grad = jax.value_and_grad(total_loss, has_aux=True)(new_logp)
  assert loss.dtype == jnp.float64
  ref_loss, ref_grads, ref_metrics = _reference(*rollout[2:5], rollout[5], aggregation, KL_COEF,
                                                estimator)
  # Both clip sides are active in this data.
  assert ref_metrics["clip_low"] > 0 and ref_metrics["clip_high"] > 0
  assert abs(float(loss) - ref_loss) < 1e-6
  got_grads = _unpack_rows(grad, packed, rollout)
  assert max(np.max(np.abs(g - r)) for g, r in zip(got_grads, ref_grads)) < 1e-6
  np.testing.assert_array_equal(np.asarray(grad)[packed.loss_mask == 0], 0.0)
  for name in ("clip_low", "clip_high"):
    assert abs(float(metrics[f"{name}_fraction"]) - ref_metrics[name]) < 1e-9
  assert float(metrics["num_tokens"]) == ref_metrics["num_tokens"]
  assert float(metrics["num_interactions"]) == ref_metrics["num_interactions"]


def test_f32_without_reference_policy():
  """kl_coef = 0 needs no ref_logp; float32 agrees with the f64 reference to 1e-5."""
  rollout = _random_rollout(np.random.default_rng(5))
  packed, aligned = _packed_inputs(rollout, packing.PackingConfig(seq_len=40, micro_batch_size=4))
  config = loss_lib.LossConfig(clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH, kl_coef=0.0)
  terms = jax.jit(jax.vmap(lambda *a: loss_lib.ppo_loss_terms(*a, config)))(
      aligned["new"], packed.old_logp, packed.advantages, packed.loss_mask, packed.row_num_tokens)
  # Combine the vmapped per-micro-batch terms, as add_terms would one by one.
  total = loss_lib.LossTerms(
      numerator=terms.numerator.sum(), denominator=terms.denominator.sum(),
      token_sums={k: v.sum() for k, v in terms.token_sums.items()},
      ratio_min=terms.ratio_min.min(), ratio_max=terms.ratio_max.max())
  loss, metrics = loss_lib.finalize(total)
  ref_loss, _, _ = _reference(*rollout[2:5], rollout[5], "interaction_mean", 0.0, "k1")
  assert loss.dtype == jnp.float32
  assert abs(float(loss) - ref_loss) < 1e-5
  assert "ref_kl_mean" not in metrics
  ratios = np.exp(np.concatenate(rollout[3]) - np.concatenate(rollout[2]))
  np.testing.assert_allclose([metrics["ratio_min"], metrics["ratio_max"]], [ratios.min(), ratios.max()],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="ref_logp"):
    loss_lib.ppo_loss_terms(aligned["new"][0], packed.old_logp[0], packed.advantages[0],
                            packed.loss_mask[0], packed.row_num_tokens[0],
                            dataclasses.replace(config, kl_coef=1e-3))


def test_log_ratio_is_clamped_and_padding_is_inert():
  """A far-off token cannot overflow the ratio, and garbage on padding slots changes nothing."""
  config = loss_lib.LossConfig(kl_coef=1e-3, kl_estimator="k3", max_log_ratio=20.0)
  mask = jnp.array([[1.0, 1.0, 0.0]])
  row_tokens = jnp.array([[2, 2, 0]])
  old = jnp.array([[-100.0, -1.0, 0.0]])
  adv = jnp.array([[-1.0, -1.0, 0.0]])

  def loss_at(pad_logp):
    logp = jnp.array([[-0.5, -1.0, pad_logp]])
    ref = jnp.array([[-0.5, -1.0, 1e4]])
    return loss_lib.finalize(loss_lib.ppo_loss_terms(logp, old, adv, mask, row_tokens, config,
                                                     ref_logp=ref))[0]

  loss = loss_at(-1e4)
  assert bool(jnp.isfinite(loss))
  # Token 0: ratio e^20 (clamped from e^99.5), A = -1 -> loss e^20; token 1: ratio 1 -> loss 1.
  np.testing.assert_allclose(loss, (math.exp(20.0) + 1.0) / 2, rtol=1e-5)
  np.testing.assert_allclose(loss_at(-3.0), loss, rtol=1e-6)
  grad = jax.grad(loss_at)(-1e4)
  assert float(grad) == 0.0


def test_config_validation():
  with pytest.raises(ValueError, match="aggregation"):
    loss_lib.LossConfig(aggregation="mean")
  with pytest.raises(ValueError, match="kl_estimator"):
    loss_lib.LossConfig(kl_estimator="k2")
  with pytest.raises(ValueError, match="norm_length"):
    loss_lib.LossConfig(aggregation="sequence_sum_norm")


VOCAB, DIM, SEQ_LEN = 9, 6, 12


def _toy_terms(config):
  """A toy policy: logits = (embed[token] + pos[position]) @ unembed.T (unembed is [V, D]),
  log-probs via chunks."""
  def terms_fn(params, micro):
    hidden = params["embed"][micro["tokens"]] + params["pos"][micro["positions"]]
    logp, entropy = chunked_token_logprobs(hidden, params["unembed"], micro["targets"], chunk_size=5,
                                           compute_entropy=True)
    return loss_lib.ppo_loss_terms(logp, micro["old_logp"], micro["advantages"], micro["loss_mask"],
                                   micro["row_num_tokens"], config, ref_logp=micro["ref_logp"],
                                   entropy=entropy)
  return terms_fn


@pytest.mark.parametrize("aggregation", ["interaction_mean", "token_mean"])
def test_gradient_accumulation_is_invariant(aggregation):
  rng = np.random.default_rng(2)
  rollout = _random_rollout(rng, num_rows=14)
  config = packing.PackingConfig(seq_len=SEQ_LEN, micro_batch_size=1, num_micro_batches_multiple=4)
  packed, aligned = _packed_inputs(rollout, config)
  keys = jax.random.split(jax.random.key(0), 3)
  params = {"embed": jax.random.normal(keys[0], (VOCAB, DIM)),
            "pos": 0.1 * jax.random.normal(keys[1], (SEQ_LEN, DIM)),
            "unembed": jax.random.normal(keys[2], (VOCAB, DIM)) / np.sqrt(DIM)}  # [V, D]
  lines = {name: value.reshape(-1, SEQ_LEN) for name, value in packed.as_dict().items()}
  lines["ref_logp"] = aligned["ref"].reshape(-1, SEQ_LEN)
  num_lines = lines["tokens"].shape[0]
  assert num_lines % 4 == 0 and num_lines >= 8
  loss_config = loss_lib.LossConfig(aggregation=aggregation, kl_coef=KL_COEF)
  step = jax.jit(lambda p, mb: loss_lib.accumulate_gradients(_toy_terms(loss_config), p, mb))

  results = []
  for num_micro in (1, 2, 4):
    micro_batches = {k: jnp.asarray(v.reshape(num_micro, num_lines // num_micro, SEQ_LEN))
                     for k, v in lines.items()}
    results.append(step(params, micro_batches))
  (loss1, grads1, metrics1) = results[0]
  assert float(metrics1["num_interactions"]) == 14
  assert float(metrics1["clip_low_fraction"]) + float(metrics1["clip_high_fraction"]) > 0
  assert "entropy_mean" in metrics1
  for loss_k, grads_k, metrics_k in results[1:]:
    np.testing.assert_allclose(loss_k, loss1, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads1)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for name in ("num_tokens", "num_interactions", "clip_low_fraction", "ratio_max", "ratio_min"):
      np.testing.assert_allclose(metrics_k[name], metrics1[name], rtol=1e-6)

  # The accumulated gradient is the gradient of the full-batch loss.
  def full_loss(p):
    terms = _toy_terms(loss_config)(p, {k: jnp.asarray(v) for k, v in lines.items()})
    return loss_lib.finalize(terms)[0]
  np.testing.assert_allclose(full_loss(params), loss1, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(jax.grad(full_loss)(params)), jax.tree.leaves(grads1)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert any(float(jnp.abs(g).max()) > 1e-4 for g in jax.tree.leaves(grads1))
