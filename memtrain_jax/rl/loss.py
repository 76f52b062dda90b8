"""GRPO / PPO-clip loss on packed micro-batches (paper Eq. 4), jit-compatible.

Per loss token t (a completion token of some interaction row):
  r_t    = exp(clamp(logp_t - old_logp_t))
  loss_t = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) + kl_coef * KL_t
with KL_t = logp - ref (k1) or e^(ref-logp) - (ref-logp) - 1 (k3, low variance).

Every aggregation mode is a weighted token sum divided by a normaliser that does not depend on the
parameters:
  interaction_mean  : weight 1/|o_row|,  normaliser = number of interactions  (the paper's Eq. 4)
  token_mean        : weight 1,          normaliser = number of loss tokens
  sequence_sum      : weight 1,          normaliser = number of interactions
  sequence_sum_norm : weight 1/norm_len, normaliser = number of interactions  (Dr. GRPO)
Each micro-batch returns its own (numerator, denominator); summing both over the micro-batches of a
step and dividing once gives the full-batch objective, so micro-batching never changes the loss or
its gradient (the gradient of the sum of numerators, divided by the summed denominator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

AGGREGATIONS = ("interaction_mean", "token_mean", "sequence_sum", "sequence_sum_norm")
KL_ESTIMATORS = ("k1", "k3")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """PPO-clip objective settings.

  Attributes:
    aggregation: one of AGGREGATIONS (see the module docstring).
    clip_eps_low: lower clip, the ratio is clipped below at 1 - clip_eps_low.
    clip_eps_high: upper clip (DAPO clip-higher); the paper's values are not given, DAPO uses 0.28.
    kl_coef: weight of the KL-to-reference term (paper: 1e-3); 0 means no reference is needed.
    kl_estimator: "k1" (logp - ref) or "k3" (low-variance, as MemAgent's low_var_kl).
    max_log_ratio: log-ratios are clamped to +-this before exp, so one stale token cannot overflow.
    norm_length: the constant token count that divides token sums in "sequence_sum_norm" (the
      maximum completion length).
  """
  aggregation: str = "interaction_mean"
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.28
  kl_coef: float = 1e-3
  kl_estimator: str = "k3"
  max_log_ratio: float = 20.0
  norm_length: int | None = None

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation {self.aggregation!r} not in {AGGREGATIONS}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"kl_estimator {self.kl_estimator!r} not in {KL_ESTIMATORS}")
    if self.aggregation == "sequence_sum_norm" and not self.norm_length:
      raise ValueError("aggregation 'sequence_sum_norm' needs LossConfig.norm_length > 0")


class LossTerms(NamedTuple):
  """Additive pieces of the loss and metrics of one or more micro-batches.

  Attributes:
    numerator: sum over loss tokens of aggregation weight * per-token loss (depends on params).
    denominator: the normaliser's share of these micro-batches (independent of params).
    token_sums: per-metric sums over loss tokens, including "num_tokens" and "num_interactions".
    ratio_min: smallest importance ratio over loss tokens (+inf if none).
    ratio_max: largest importance ratio over loss tokens (-inf if none).
  """
  numerator: jax.Array
  denominator: jax.Array
  token_sums: dict[str, jax.Array]
  ratio_min: jax.Array
  ratio_max: jax.Array


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str, max_log_ratio: float) -> jax.Array:
  """Per-token estimate of KL(pi_theta || pi_ref) from tokens sampled from pi_theta."""
  if estimator == "k1":
    return logp - ref_logp
  if estimator == "k3":
    log_ratio = jnp.clip(ref_logp - logp, -max_log_ratio, max_log_ratio)
    return jnp.exp(log_ratio) - log_ratio - 1.0
  raise ValueError(f"kl_estimator {estimator!r} not in {KL_ESTIMATORS}")


def ppo_loss_terms(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, loss_mask: jax.Array,
                   row_num_tokens: jax.Array, config: LossConfig, *, ref_logp: jax.Array | None = None,
                   entropy: jax.Array | None = None) -> LossTerms:
  """Loss pieces of one packed micro-batch; every input is [B, L] (see `rl.packing.PackedBatch`).

  Args:
    logp: current-policy log-prob of each target (differentiable).
    old_logp: rollout log-prob of each target.
    advantages: per-token advantage (the row's advantage on its loss tokens).
    loss_mask: 1 on tokens that are trained.
    row_num_tokens: number of loss tokens of the token's row (0 on padding).
    config: objective settings.
    ref_logp: reference-policy log-probs; required when config.kl_coef != 0.
    entropy: optional per-token entropy of the current policy, only reported.

  Returns:
    LossTerms to accumulate with `add_terms` and turn into a loss with `finalize`.
  """
  # At least f32 (bf16 logps are upcast); f64 stays f64 so the loss can be checked in f64.
  dtype = jnp.promote_types(logp.dtype, jnp.float32)
  mask = loss_mask.astype(dtype)
  on = mask > 0
  logp = logp.astype(dtype)
  # Zero the log-ratio off the mask so padding (arbitrary logp, old_logp 0) cannot make inf * 0 = nan.
  log_ratio = jnp.where(on, logp - old_logp.astype(dtype), 0.0)
  log_ratio = jnp.clip(log_ratio, -config.max_log_ratio, config.max_log_ratio)
  ratio = jnp.exp(log_ratio)
  adv = advantages.astype(dtype)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - config.clip_eps_low, 1.0 + config.clip_eps_high) * adv
  token_loss = -jnp.minimum(unclipped, clipped)

  token_sums = {}
  if config.kl_coef != 0.0:
    if ref_logp is None:
      raise ValueError("LossConfig.kl_coef != 0 needs ref_logp")
    ref = jnp.where(on, ref_logp.astype(dtype), logp)
    kl = kl_penalty(logp, ref, config.kl_estimator, config.max_log_ratio)
    token_loss = token_loss + config.kl_coef * kl
    token_sums["ref_kl"] = jnp.sum(jax.lax.stop_gradient(kl) * mask)

  # Aggregation weights and this micro-batch's normaliser, both from the mask and lengths only.
  row_tokens = jnp.maximum(row_num_tokens.astype(dtype), 1.0)
  # Each interaction's 1/|o| weights sum to 1, so their sum counts interactions; rounding makes the
  # count exact.
  num_interactions = jnp.round(jnp.sum(mask / row_tokens))
  num_tokens = jnp.sum(mask)
  if config.aggregation == "interaction_mean":
    weight, denominator = mask / row_tokens, num_interactions
  elif config.aggregation == "token_mean":
    weight, denominator = mask, num_tokens
  elif config.aggregation == "sequence_sum":
    weight, denominator = mask, num_interactions
  else:  # sequence_sum_norm
    weight, denominator = mask / float(config.norm_length), num_interactions
  numerator = jnp.sum(weight * token_loss)

  # Metrics, as sums over loss tokens; `finalize` turns them into token means.
  ratio_ng = jax.lax.stop_gradient(ratio)
  log_ratio_ng = jax.lax.stop_gradient(log_ratio)
  token_sums["num_tokens"] = num_tokens
  token_sums["num_interactions"] = num_interactions
  # The clipped branch is the one min() picks: below 1-eps_low with A<0, above 1+eps_high with A>0.
  token_sums["clip_low"] = jnp.sum(mask * ((ratio_ng < 1.0 - config.clip_eps_low) & (adv < 0)))
  token_sums["clip_high"] = jnp.sum(mask * ((ratio_ng > 1.0 + config.clip_eps_high) & (adv > 0)))
  # k3 estimate of KL(pi_old || pi_theta) on the rollout tokens (sampled from pi_old).
  token_sums["approx_kl"] = jnp.sum(mask * (ratio_ng - 1.0 - log_ratio_ng))
  token_sums["ratio"] = jnp.sum(mask * ratio_ng)
  token_sums["advantage"] = jnp.sum(mask * adv)
  token_sums["nonzero_advantage"] = jnp.sum(mask * (adv != 0))
  if entropy is not None:
    token_sums["entropy"] = jnp.sum(mask * jax.lax.stop_gradient(entropy.astype(dtype)))
  return LossTerms(
      numerator=numerator, denominator=jax.lax.stop_gradient(denominator), token_sums=token_sums,
      ratio_min=jnp.min(jnp.where(on, ratio_ng, jnp.inf)),
      ratio_max=jnp.max(jnp.where(on, ratio_ng, -jnp.inf)))


def add_terms(a: LossTerms, b: LossTerms) -> LossTerms:
  """Combines the terms of two sets of micro-batches."""
  return LossTerms(
      numerator=a.numerator + b.numerator, denominator=a.denominator + b.denominator,
      token_sums=jax.tree.map(jnp.add, a.token_sums, b.token_sums),
      ratio_min=jnp.minimum(a.ratio_min, b.ratio_min), ratio_max=jnp.maximum(a.ratio_max, b.ratio_max))


def finalize(terms: LossTerms) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss (numerator / denominator) and metrics (token means, counts, ratio extremes)."""
  loss = terms.numerator / jnp.maximum(terms.denominator, 1.0)
  num_tokens = jnp.maximum(terms.token_sums["num_tokens"], 1.0)
  metrics = {"loss": loss, "ratio_min": terms.ratio_min, "ratio_max": terms.ratio_max}
  for name, value in terms.token_sums.items():
    if name in ("num_tokens", "num_interactions"):
      metrics[name] = value
    elif name in ("clip_low", "clip_high"):
      metrics[f"{name}_fraction"] = value / num_tokens
    else:
      metrics[f"{name}_mean"] = value / num_tokens
  return loss, metrics


def accumulate_gradients(terms_fn: Callable[[Any, Any], LossTerms], params: Any,
                         micro_batches: Any) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
  """Loss, gradient and metrics of a step, scanning `terms_fn` over stacked micro-batches.

  The gradient is d(sum of numerators)/d(params) / (sum of denominators): exactly the gradient of
  the full-batch loss, whatever the number of micro-batches.

  Args:
    terms_fn: (params, micro_batch) -> LossTerms for one micro-batch.
    params: differentiated pytree.
    micro_batches: pytree whose leaves have a leading num_micro_batches axis.

  Returns:
    (loss, grads, metrics).
  """
  def numerator_and_terms(p, micro_batch):
    terms = terms_fn(p, micro_batch)
    return terms.numerator, terms

  grad_fn = jax.grad(numerator_and_terms, has_aux=True)

  def step(carry, micro_batch):
    grad_sum, terms_sum = carry
    grads, terms = grad_fn(params, micro_batch)
    return (jax.tree.map(jnp.add, grad_sum, grads), add_terms(terms_sum, terms)), None

  first = jax.tree.map(lambda x: x[0], micro_batches)
  grads0, terms0 = grad_fn(params, first)
  rest = jax.tree.map(lambda x: x[1:], micro_batches)
  (grad_sum, terms), _ = jax.lax.scan(step, (grads0, terms0), rest)
  loss, metrics = finalize(terms)
  scale = 1.0 / jnp.maximum(terms.denominator, 1.0)
  grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grad_sum)
  return loss, grads, metrics
