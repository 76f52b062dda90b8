"""The jitted GRPO update: sharded, donated, one optimizer step per call.

One call of the compiled step takes the packed micro-batches of one mini-batch
([num_micro, micro_batch, seq_len] arrays, see `rl.packing.PackedBatch`), scans them with gradient
accumulation that carries the loss numerator and denominator (`rl.loss.accumulate_gradients`), so
the number of micro-batches never changes the objective, and applies one optimizer update. Several
PPO updates per rollout batch are a Python loop over mini-batches calling the same compiled step
(see `memtrain_jax.train.run_updates`).

Sharding: parameters follow `sharding.TRAIN_RULES` (FSDP over 'fsdp' on the embed axis, tensor
parallel over 'tensor'); optimizer moments inherit the sharding of their parameter; the packed batch
is split on its micro_batch axis over ('data', 'fsdp'). The state is donated, so parameters and
moments are updated in place.

The reference policy (for the KL term) is evaluated once per rollout batch by `make_logprob_fn`,
outside the update, and enters the step as a `ref_logp` field of the batch. With kl_coef == 0 it is
never computed and no reference parameters need to be kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memtrain_jax import sharding as sharding_lib
from memtrain_jax.models import decoder
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.models.params import param_shapes, unembedding
from memtrain_jax.rl import loss as loss_lib
from memtrain_jax.rl.logprobs import chunked_token_logprobs
from memtrain_jax.rl.packing import PackedBatch

# Fields of `PackedBatch` the update reads; `row_index` stays on the host.
TRAIN_BATCH_FIELDS = ("tokens", "targets", "positions", "segment_ids", "branch_ids", "loss_mask",
                      "old_logp", "advantages", "row_num_tokens")
# Fields the log-prob function reads (the loss mask says which tokens need a log-prob).
LOGPROB_BATCH_FIELDS = ("tokens", "targets", "positions", "segment_ids", "branch_ids",
                        "loss_mask")
# Fields a batch may leave out: without branch_ids every segment is one row (no shared prompts).
OPTIONAL_BATCH_FIELDS = ("branch_ids",)


def _select_fields(arrays: Mapping, fields: tuple[str, ...]) -> dict:
  missing = [n for n in fields if n not in arrays and n not in OPTIONAL_BATCH_FIELDS]
  if missing:
    raise ValueError(f"the batch has no field(s) {missing}; a packed batch (rl.packing.pack_rows) "
                     f"has all of {fields}")
  return {name: arrays[name] for name in fields if name in arrays}

Params = Any
Batch = Mapping[str, jax.Array]


class TrainState(NamedTuple):
  """Everything the update changes. A NamedTuple, hence a pytree.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far (a non-finite update,
      which the train step skips, does not count).
    params: model parameters.
    opt_state: optax state of `optimizer`.
  """
  step: jax.Array
  params: Params
  opt_state: Any


# ----------------------------------------------------------------------------------------------
# Optimizer.


def make_schedule(cfg, updates_per_step: int = 1) -> optax.Schedule:
  """Learning rate as a function of the optimizer update count.

  Warm-up and decay are counted in training steps (rollout batches), as verl steps its scheduler
  once per `update_actor`; with several mini-batch updates per rollout batch the count is divided
  by `updates_per_step`.

  Args:
    cfg: the `optim` config section: lr, warmup_steps, schedule ('constant' | 'cosine'),
      decay_steps (cosine only; the total number of training steps), min_lr_ratio (cosine floor).
    updates_per_step: optimizer updates per training step (ppo_epochs * num_mini_batches).

  Returns:
    An optax schedule.
  """
  lr = float(cfg.lr)
  warmup = int(cfg.warmup_steps)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    decay_steps = int(cfg.decay_steps) - warmup
    if decay_steps < 1:
      raise ValueError(f"optim.decay_steps={cfg.decay_steps} must exceed optim.warmup_steps="
                       f"{warmup} for the cosine schedule")
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.min_lr_ratio))
  else:
    raise ValueError(f"optim.schedule={cfg.schedule!r}; use 'constant' or 'cosine'")
  if warmup > 0:
    # Starts at lr / warmup rather than 0 so that the first update is not wasted.
    warm = (optax.linear_schedule(lr / warmup, lr, warmup - 1) if warmup > 1
            else optax.constant_schedule(lr))
    base = optax.join_schedules([warm, after], [warmup])
  else:
    base = after
  if updates_per_step == 1:
    return base
  return lambda count: base(count // updates_per_step)


def _decay_mask(params: Params) -> Params:
  """True for weight matrices; norms and biases are not decayed (they are not scale-free)."""
  def is_matrix(path, _):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", "")))
    return not (name.endswith("norm") or name in ("bq", "bk", "bv"))
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg, updates_per_step: int = 1) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the schedule of `make_schedule`.

  Args:
    cfg: the `optim` config section (lr, warmup_steps, schedule, decay_steps, min_lr_ratio,
      weight_decay, grad_clip, b1, b2, eps).
    updates_per_step: optimizer updates per training step.

  Returns:
    The optax transformation; its state is a pytree with params-shaped moments.
  """
  parts = []
  if cfg.grad_clip and cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  parts.append(optax.adamw(make_schedule(cfg, updates_per_step), b1=float(cfg.b1), b2=float(cfg.b2),
                           eps=float(cfg.eps), weight_decay=float(cfg.weight_decay),
                           mask=_decay_mask))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------
# Log-probs.


def policy_logprobs(model_config: ModelConfig, params: Params, batch_micro: Batch, *,
                    chunk_size: int, compute_entropy: bool = False,
                    loss_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs of `targets` (and entropy) for one packed micro-batch, [B, L] float32 each.

  The hidden states go through the output projection chunk by chunk (`chunked_token_logprobs`),
  so the [B, L, V] logits never exist at once. With `loss_mask`, only the tokens it marks get
  log-probs (the others are 0), which is all the loss reads.
  """
  hidden = decoder.forward_hidden(model_config, params, batch_micro["tokens"],
                                  positions=batch_micro["positions"],
                                  segment_ids=batch_micro["segment_ids"],
                                  branch_ids=batch_micro.get("branch_ids"))
  # The output projection is used as the [V, D] matrix it is stored as: its transpose would be a
  # copy.
  w = unembedding(model_config, params).astype(model_config.dtype)
  return chunked_token_logprobs(hidden, w, batch_micro["targets"], chunk_size=chunk_size,
                                compute_entropy=compute_entropy, loss_mask=loss_mask,
                                vocab_major=True)


# ----------------------------------------------------------------------------------------------
# Shardings.


def packed_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[num_micro, micro_batch, seq_len] arrays: micro_batch split over ('data', 'fsdp')."""
  batch_axes = dict(sharding_lib.TRAIN_RULES)["batch"]
  return NamedSharding(mesh, PartitionSpec(None, batch_axes, None))


def check_micro_batch_size(micro_batch_size: int, mesh: Mesh) -> None:
  """Raises unless `micro_batch_size` lines split evenly over the mesh's batch axes.

  The trainer calls this at start-up as well as per batch, so a mesh that does not fit the packing
  fails before any rollout work rather than after the first step's rollouts.
  """
  split = int(np.prod([mesh.shape[a] for a in packed_batch_sharding(mesh).spec[1]]))
  if micro_batch_size % split:
    raise ValueError(
        f"micro_batch_size={micro_batch_size} is not divisible by the data*fsdp mesh size {split} "
        f"(mesh {dict(mesh.shape)}); set rl.packing.micro_batch_size to a multiple of {split}")


def state_shardings(model_config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules=sharding_lib.TRAIN_RULES) -> TrainState:
  """NamedShardings of a TrainState: params by `rules`, moments like their params, rest replicated.
  """
  params_sharding = sharding_lib.param_shardings(model_config, mesh, rules)
  abstract_params = param_shapes(model_config)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = sharding_lib.replicated(mesh)
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt, params_sharding,
      transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding)


def abstract_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                   mesh: Mesh, rules=sharding_lib.TRAIN_RULES) -> TrainState:
  """ShapeDtypeStructs with shardings of a TrainState: the restore target for checkpoints."""
  shapes = jax.eval_shape(lambda p: init_state(p, optimizer), param_shapes(model_config))
  shardings = state_shardings(model_config, optimizer, mesh, rules)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def create_train_state(model_config: ModelConfig, params: Params,
                       optimizer: optax.GradientTransformation, mesh: Mesh,
                       rules=sharding_lib.TRAIN_RULES) -> TrainState:
  """A fresh TrainState placed on `mesh` (moments created directly in their sharding).

  `params` may live anywhere (host, one device, or already on the mesh).
  """
  shardings = state_shardings(model_config, optimizer, mesh, rules)
  params = jax.device_put(params, shardings.params)
  init = jax.jit(functools.partial(init_state, optimizer=optimizer),
                 in_shardings=(shardings.params,), out_shardings=shardings)
  return init(params)


def shard_batch(batch: PackedBatch | Mapping[str, np.ndarray], mesh: Mesh, *,
                fields: tuple[str, ...] = TRAIN_BATCH_FIELDS,
                ref_logp: jax.Array | np.ndarray | None = None) -> dict[str, jax.Array]:
  """Puts the fields of a packed batch on the mesh, micro_batch axis over ('data', 'fsdp').

  Args:
    batch: a PackedBatch or a dict of its [num_micro, micro_batch, seq_len] arrays.
    mesh: the training mesh.
    fields: the fields to keep.
    ref_logp: reference log-probs [num_micro, micro_batch, seq_len], added as 'ref_logp'.

  Returns:
    A dict of global arrays, the input of the train step or of a log-prob function.
  """
  arrays = batch.as_dict() if isinstance(batch, PackedBatch) else dict(batch)
  arrays = _select_fields(arrays, fields)
  if ref_logp is not None:
    arrays["ref_logp"] = ref_logp
  target = packed_batch_sharding(mesh)
  check_micro_batch_size(arrays["tokens"].shape[1], mesh)
  out = {}
  for name, value in arrays.items():
    if isinstance(value, jax.Array):
      out[name] = jax.device_put(value, target)
    else:
      out[name] = sharding_lib.put_host_array(np.asarray(value), target)
  return out


# ----------------------------------------------------------------------------------------------
# Jitted functions.


def make_logprob_fn(model_config: ModelConfig, mesh: Mesh, *, chunk_size: int,
                    rules=sharding_lib.TRAIN_RULES) -> Callable[[Params, Batch], jax.Array]:
  """A jitted (params, batch) -> log-probs [num_micro, micro_batch, seq_len] float32.

  Used for the reference policy of the KL term (call it once per rollout batch with the reference
  params, then pass the result as `ref_logp` to `shard_batch`), or to recompute old log-probs with
  the trainer's numerics. Micro-batches run one after another (`lax.map`), so memory is that of one
  forward. Only the LOGPROB_BATCH_FIELDS of `batch` are read, and only the tokens of its
  `loss_mask` get log-probs (the others are 0): all that the loss reads. Projecting every prompt
  position onto the vocabulary as well would cost more than the update itself wherever the
  vocabulary dominates the FLOPs (small models, long shared prompts).
  """
  params_sharding = sharding_lib.param_shardings(model_config, mesh, rules)
  batch_sharding = packed_batch_sharding(mesh)

  def logprobs(params, batch):
    fn = lambda micro: policy_logprobs(model_config, params, micro, chunk_size=chunk_size,
                                       loss_mask=micro["loss_mask"])[0]
    return jax.lax.map(fn, batch)

  jitted = jax.jit(logprobs, in_shardings=(params_sharding, batch_sharding),
                   out_shardings=batch_sharding)

  def call(params, batch):
    return jitted(params, _select_fields(batch, LOGPROB_BATCH_FIELDS))

  call.jitted = jitted
  return call


def make_train_step(model_config: ModelConfig, loss_config: loss_lib.LossConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh, *, chunk_size: int,
                    compute_entropy: bool = True, rules=sharding_lib.TRAIN_RULES
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The compiled update: (state, batch) -> (new_state, metrics); `state` is donated.

  Args:
    model_config: the policy's architecture (its remat / scan_layers switches apply).
    loss_config: the PPO-clip objective; with kl_coef != 0 the batch needs a 'ref_logp' field.
    optimizer: from `make_optimizer` (any optax transformation works).
    mesh: the ('data', 'fsdp', 'tensor') training mesh.
    chunk_size: sequence positions per chunk of the output projection (`chunked_token_logprobs`;
      a chunk holds chunk_size * micro_batch tokens). Only loss tokens are projected.
    compute_entropy: report the policy entropy on loss tokens (costs one more pass over each
      chunk's logits, no extra memory).
    rules: parameter sharding rules.

  Returns:
    A jitted function. `batch` is a dict with TRAIN_BATCH_FIELDS (+ 'ref_logp'), each
    [num_micro, micro_batch, seq_len] and sharded as `shard_batch` does; one distinct
    num_micro compiles once. Metrics (replicated scalars): loss, grad_norm, update_norm,
    clip_low_fraction, clip_high_fraction, approx_kl_mean, ratio_mean/min/max, advantage_mean,
    nonzero_advantage_mean, num_tokens, num_interactions, entropy_mean (if computed),
    ref_kl_mean (if kl_coef != 0), skipped_nonfinite.

  Non-finite updates are skipped: when the loss or the global gradient norm is NaN / inf, the
  returned params and optimizer state are bitwise the input ones, `state.step` (the count of
  applied updates) does not advance, and the metric skipped_nonfinite is 1.0 (else 0.0). The
  loss and grad_norm metrics then show the non-finite values, and update_norm is 0.
  """
  needs_ref = loss_config.kl_coef != 0.0
  shardings = state_shardings(model_config, optimizer, mesh, rules)
  batch_sharding = packed_batch_sharding(mesh)
  replicated = sharding_lib.replicated(mesh)

  def terms_fn(params, micro):
    logp, entropy = policy_logprobs(model_config, params, micro, chunk_size=chunk_size,
                                    compute_entropy=compute_entropy, loss_mask=micro["loss_mask"])
    return loss_lib.ppo_loss_terms(
        logp, micro["old_logp"], micro["advantages"], micro["loss_mask"], micro["row_num_tokens"],
        loss_config, ref_logp=micro.get("ref_logp"), entropy=entropy)

  def step(state: TrainState, batch: Batch):
    if needs_ref and "ref_logp" not in batch:
      raise ValueError("LossConfig.kl_coef != 0: the batch needs 'ref_logp' (see make_logprob_fn)")
    loss, grads, metrics = loss_lib.accumulate_gradients(terms_fn, state.params, dict(batch))
    grad_norm = optax.tree.norm(grads)
    # One NaN / inf gradient element makes the global norm non-finite, so these two scalars cover
    # the loss and every gradient. (A norm that overflows f32 from huge finite gradients counts too.)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step is skipped inside the program: every leaf is selected back from the input,
    # so params and optimizer state (moments, optax's update count, hence the lr schedule) come out
    # bitwise unchanged, and a finite step selects exactly what it computed. The outputs still go
    # into the donated buffers, but the new moments, read by both the update and the select, may be
    # held in temporaries (on CPU: about 0.75x the parameters' f32 bytes more temp memory with
    # AdamW; lax.cond / while_loop variants measured worse). The tree structures are untouched
    # (unlike optax.apply_if_finite, which adds state), so older checkpoints still restore.
    keep_if_finite = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_if_finite, params, state.params)
    opt_state = jax.tree.map(keep_if_finite, opt_state, state.opt_state)
    # `step` counts applied updates, so a skipped one does not advance it.
    step_count = state.step + finite.astype(state.step.dtype)
    # loss and grad_norm stay as computed (non-finite: they say why the update was skipped);
    # update_norm is that of the update applied, 0 when skipped.
    update_norm = jnp.where(finite, optax.tree.norm(updates), 0.0)
    metrics = dict(metrics, grad_norm=grad_norm, update_norm=update_norm,
                   skipped_nonfinite=jnp.logical_not(finite).astype(jnp.float32))
    new_state = TrainState(step=step_count, params=params, opt_state=opt_state)
    return new_state, metrics

  return jax.jit(step, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))

