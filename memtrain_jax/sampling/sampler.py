"""The rollout sampler: batched generation with a KV cache for RL rollouts and evaluation.

    sampler = Sampler(model_config, tokenizer, SamplerConfig(max_new_tokens=256), mesh=mesh)
    batch = sampler.generate(params, prompts, num_samples=8, temperature=1.0, seed=step)

- Prefill and decode are two jitted programs; the decode program donates the KV cache and runs a
  `lax.while_loop` that ends when every row is done. Weights are arguments, never constants.
- Shapes: prompts are left-padded to a prompt bucket, batches to a batch bucket; the cache holds
  bucket + `max_new_tokens` slots. Each (batch bucket, prompt bucket) pair compiles once;
  `num_compiles()` reports how many programs this sampler has built. The rows of one call are
  cut into micro-batches (each one prefill and one decode loop) by the cheapest plan in prompt
  tokens, padding against decode loops (`decode_step_tokens`, `batching.plan_microbatches`).
- Temperature, top-p, top-k, the per-call token budget and the seed are traced values.
- On the CPU backend a decode step's cache write and attention run as one multi-threaded kernel
  over each row's attended slots (`kernels.decode_attention`, `SamplerConfig.decode_attention`),
  under `jax.shard_map` when the sampler has a mesh; elsewhere, or without a C++ compiler, XLA's.
  Float32 matmuls, of decode steps and of prefill, run as a CPU kernel over weights packed once
  per parameters (`kernels.packed_matmul`, `sampling.decode_weights`,
  `SamplerConfig.decode_matmul` and `prefill_matmul`).
- Completions end on the model's eos ids, `stop_token_ids` or `stop_strings`; the stop token is
  part of the completion. Lengths, not `token == pad_id`, say where a completion ends.
- Log-probs: `logprobs` under the unmodified policy (temperature 1, no truncation), which is
  pi_old for the trainer, and `sampling_logprobs` under the distribution actually sampled from
  (0 for greedy).
- Prefix sharing: the rows that continue one prompt (its `num_samples` samples, or identical
  prompts) prefill it once and copy its cache.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Sequence

import jax
import numpy as np

from memtrain_jax import models
from memtrain_jax import sharding as shd
from memtrain_jax.config_lib import check_cache_dtype, check_kernel_setting
from memtrain_jax.kernels import cpu_library, decode_attention, packed_matmul
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.sampling import batching, decode_weights, programs
from memtrain_jax.sampling.logits import SamplingParams
from memtrain_jax.sampling.stops import build_stop_spec, cut_at_stop_string

# The V cache's axes. K is stored [..., head_dim, length]; both of those axes are unsharded, so one
# spec serves both arrays.
_CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", "cache_head_dim")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  prompt_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
  batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # pad the batch too, so few shapes
  max_new_tokens: int = 256  # cache capacity = prompt bucket + max_new_tokens
  stop_token_ids: tuple[int, ...] = ()  # added to the model's eos ids
  stop_strings: tuple[str, ...] = ()
  share_prefix: bool = True  # one prefill per distinct prompt (off only to measure it)
  # What one decode step costs in prompt tokens of prefill, for planning micro-batches: rows of a
  # shorter prompt bucket are padded into a micro-batch of longer prompts when that padding costs
  # less than a decode loop of their own (`batching.plan_microbatches`). About 50 on a 2-core CPU
  # with SmolLM2-135M (a ~55 ms step, prefill at ~1 ms a token); hundreds on GPU/TPU, where decode
  # is bound by reading the weights and prefill by the matmul rate. 0 plans for padding only.
  decode_step_tokens: int = 64
  # The KV cache's dtype: "auto" is the compute dtype, except float32 for 16-bit compute on the
  # CPU backend without the decode-attention kernel (XLA:CPU has no in-place 16-bit cache write;
  # see `resolve_cache_dtype`).
  cache_dtype: str = "auto"
  # A decode step's attention: "auto" = the multi-threaded CPU kernel on the CPU backend when it
  # builds (`kernels.decode_attention`; else XLA's, with a warning), "kernel" = the kernel or an
  # error, "xla" = XLA's attention everywhere. GPU/TPU use XLA's attention.
  decode_attention: str = "auto"
  # A decode step's matmuls: "auto" = the CPU packed-matmul kernel for float32 compute on the CPU
  # backend with unsharded weights (no 'tensor' axis), when it builds (`kernels.packed_matmul`;
  # else XLA's, with a warning); "kernel" = the kernel or an error; "xla" = XLA's matmuls. The
  # kernel keeps a float32 copy of the weight matrices, packed once per set of parameters.
  decode_matmul: str = "auto"
  # Prefill's matmuls: the same settings, the same kernel and packed copy (it tiles prefill's
  # thousands of rows so that each tile stays in cache across the weight panels). SmolLM2 on an
  # AMD EPYC: prefill of 32 x 128 tokens 7.6 against 8.9 s with XLA's matmuls, 4 x 512 3.5
  # against 4.0 s.
  prefill_matmul: str = "auto"


def resolve_cache_dtype(cache_dtype: str, model_config: ModelConfig, backend: str,
                        kernel_writes: bool = False) -> np.dtype:
  """The KV cache dtype for `SamplerConfig.cache_dtype` on `backend` ("cpu", "gpu", "tpu").

  "auto" keeps the cache in the compute dtype. The exception is a 16-bit compute dtype on the
  CPU backend when XLA writes the cache (`kernel_writes` False: no decode-attention kernel, which
  writes a bf16 cache in place itself): it gets a float32 cache. XLA:CPU upcasts a bf16
  dynamic-update-slice to f32, and written through its uint16 bits the update is no longer in
  place: either way every decode step copied each layer's whole cache. An f32 cache is written in
  place and read once by f32 attention dots. It holds the same values (K/V are rounded to the
  compute dtype before they are stored), and attention still rounds its probabilities to the
  compute dtype (`models.decoder.cached_attention`); only the dots' summation order differs.
  SmolLM2 bf16 decode at batch 32 with 256 cache slots, a loop of 32 steps, XLA's attention: 93
  ms per step with a bf16 cache, 86 ms with an f32 cache.
  """
  check_cache_dtype(cache_dtype, "SamplerConfig.cache_dtype")
  if cache_dtype != "auto":
    return np.dtype(jax.numpy.dtype(cache_dtype))
  compute = np.dtype(model_config.dtype)
  if backend == "cpu" and compute.itemsize < 4 and not kernel_writes:
    return np.dtype(np.float32)
  return compute


def resolve_decode_attention(setting: str, backend: str):
  """The kernel for `SamplerConfig.decode_attention` on `backend`, or None for XLA's attention.

  "auto" uses the CPU kernel on the CPU backend when it builds and XLA's attention otherwise (with
  a warning naming why, on CPU); "kernel" raises `KernelUnavailableError` or, on another backend,
  ValueError instead of falling back.
  """
  check_kernel_setting(setting, "SamplerConfig.decode_attention")
  if setting == "xla":
    return None
  if backend != "cpu":
    if setting == "kernel":
      raise ValueError(f"SamplerConfig.decode_attention='kernel' is a CPU kernel; the backend is "
                       f"{backend!r}: use 'auto' or 'xla'")
    return None
  return decode_attention.decode_attention if _kernels_built(setting) else None


def resolve_matmul(setting: str, backend: str, model_config: ModelConfig,
                   mesh: jax.sharding.Mesh | None = None, field: str = "decode_matmul"):
  """The matmul for `SamplerConfig.decode_matmul` or `prefill_matmul` (`field`):
  `kernels.packed_matmul.packed_matmul` (under `shard_map` with a mesh), or None for XLA's.

  "auto" uses the kernel for float32 compute on the CPU backend when the weights are not split
  over a 'tensor' mesh axis and the kernels build (else XLA's matmuls, with a warning if the
  build failed); "kernel" raises ValueError or `KernelUnavailableError` instead of falling back.
  """
  check_kernel_setting(setting, f"SamplerConfig.{field}")
  if setting == "xla":
    return None
  why_not = None
  if backend != "cpu":
    why_not = f"it is a CPU kernel; the backend is {backend!r}"
  elif np.dtype(model_config.dtype) != np.float32:
    why_not = (f"it is float32 only; the compute dtype is {np.dtype(model_config.dtype).name} "
               f"(16-bit matmuls take XLA:CPU's fast path)")
  elif mesh is not None and mesh.shape.get("tensor", 1) > 1:
    why_not = (f"it needs whole weights; the mesh splits them over 'tensor' "
               f"({mesh.shape['tensor']} devices)")
  if why_not is not None:
    if setting == "kernel":
      raise ValueError(f"SamplerConfig.{field}='kernel' cannot be used: {why_not}; use "
                       f"'auto' or 'xla'")
    return None
  if not _kernels_built(setting):
    return None
  if mesh is None:
    return packed_matmul.packed_matmul
  return shard_packed_matmul(mesh)


def _kernels_built(setting: str) -> bool:
  """Whether the CPU kernels are usable; for "kernel" raises `KernelUnavailableError` if not,
  for "auto" warns (once per reason)."""
  reason = cpu_library.unavailable_reason()
  if reason is None:
    return True
  if setting == "kernel":
    raise cpu_library.KernelUnavailableError(reason)
  _warn_kernel_fallback(reason)
  return False


@functools.cache
def _warn_kernel_fallback(reason: str) -> None:
  logging.getLogger("memtrain").warning(
      "decode attention and matmuls run on XLA (slower on CPU) because the CPU kernels are "
      "unavailable: %s", reason)


def shard_packed_matmul(mesh: jax.sharding.Mesh):
  """`packed_matmul` per shard of the rollout batch; the packed weights are whole on every
  device (the rollout rules replicate weights when the mesh has no 'tensor' axis)."""
  batch = shd.logical_to_spec(("batch",), shd.ROLLOUT_RULES)[0]
  spec = jax.sharding.PartitionSpec

  def matmul(x, panels, n):
    return jax.shard_map(functools.partial(packed_matmul.packed_matmul, n=n), mesh=mesh,
                         in_specs=(spec(batch, None), spec()), out_specs=spec(batch, None),
                         check_vma=False)(x, panels)

  return matmul


def shard_decode_attention(kernel, mesh: jax.sharding.Mesh):
  """`kernel` per shard of the rollout layout: rows over the cache's batch axes, query and KV
  heads over its head axis (query heads are grouped per KV head, so the blocks line up)."""
  batch, heads = shd.logical_to_spec(_CACHE_AXES, shd.ROLLOUT_RULES)[:2]
  spec = jax.sharding.PartitionSpec
  per_head, cache = spec(batch, heads, None), spec(batch, heads, None, None)
  return jax.shard_map(kernel, mesh=mesh,
                       in_specs=(per_head, per_head, per_head, cache, cache, spec(batch), spec()),
                       out_specs=(per_head, cache, cache), check_vma=False)


@dataclasses.dataclass
class SampleBatch:
  """Completions in prompt-major order: prompt i's samples are rows i*n .. i*n + n - 1."""
  tokens: list[np.ndarray]  # int32 [length] each, the stop token included
  logprobs: list[np.ndarray]  # float32 [length]: log pi(token), temperature 1, no truncation
  sampling_logprobs: list[np.ndarray]  # float32 [length]: log q(token), q the sampled distribution
  lengths: np.ndarray  # int32 [rows]
  stopped: np.ndarray  # bool [rows]: ended on a stop token (False = hit max_new_tokens)

  def __len__(self) -> int:
    return len(self.tokens)


class Sampler:
  """Generates completions for lists of token-id prompts; see the module docstring."""

  def __init__(self, model_config: ModelConfig, tokenizer, config: SamplerConfig = SamplerConfig(),
               *, mesh: jax.sharding.Mesh | None = None):
    if config.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1; got {config.max_new_tokens}")
    if config.decode_step_tokens < 0:
      raise ValueError(f"decode_step_tokens must be >= 0 (prompt tokens of prefill one decode step "
                       f"costs); got {config.decode_step_tokens}")
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.config = config
    self.mesh = mesh
    self.pad_id = self._pad_id(tokenizer, model_config)
    self.stop = build_stop_spec(model_config.eos_token_ids, config.stop_token_ids,
                                config.stop_strings, tokenizer)
    backend = (jax.default_backend() if mesh is None
               else mesh.devices.flat[0].platform)
    # The decode step's attention kernel (a callable), or None for XLA's attention.
    self.attention_kernel = resolve_decode_attention(config.decode_attention, backend)
    self.cache_dtype = resolve_cache_dtype(config.cache_dtype, model_config, backend,
                                           kernel_writes=self.attention_kernel is not None)
    if self.attention_kernel is not None and mesh is not None:
      self.attention_kernel = shard_decode_attention(self.attention_kernel, mesh)
    # Each program's matmul: the CPU kernel over one packed copy of the weights, or None for
    # XLA's over the parameters as given.
    self.decode_matmul = resolve_matmul(config.decode_matmul, backend, model_config, mesh)
    self.prefill_matmul = resolve_matmul(config.prefill_matmul, backend, model_config, mesh,
                                         "prefill_matmul")
    matmul = self.decode_matmul or self.prefill_matmul
    self.packed_weights = None
    if matmul is not None:
      packer = jax.jit(self._traced_pack, static_argnums=1)
      self.packed_weights = decode_weights.PackedWeightsCache(model_config, matmul, packer)
    self.batch_multiple = 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])
    self.rows_per_batch = batching.max_rows(config.batch_buckets, self.batch_multiple)
    self.programs_built: list[tuple] = []  # (program, shapes) per trace, i.e. per compile
    cache_sharding = None
    if mesh is not None:
      spec = shd.logical_to_spec(_CACHE_AXES, shd.ROLLOUT_RULES)
      cache_sharding = lambda x: jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(*((None,) * (x.ndim - 4) + tuple(spec))))
      self._param_shardings = shd.param_shardings(model_config, mesh, "rollout")
    self._cache_sharding = cache_sharding
    self._prefill = jax.jit(self._traced_prefill, static_argnames=("capacity",))
    self._decode = jax.jit(self._traced_decode, donate_argnames=("cache",))

  @staticmethod
  def _pad_id(tokenizer, model_config) -> int:
    if tokenizer is not None and tokenizer.pad_token_id is not None:
      return int(tokenizer.pad_token_id)
    if model_config.eos_token_ids:
      return int(model_config.eos_token_ids[0])
    return 0

  # The traced bodies run once per compile, so recording there counts programs exactly.

  def _traced_prefill(self, params, tokens, cache_start, row_source, *, capacity):
    self.programs_built.append(("prefill", tuple(tokens.shape), tuple(row_source.shape), capacity))
    return programs.prefill(self.model_config, params, tokens, cache_start, row_source,
                            capacity=capacity, cache_dtype=self.cache_dtype,
                            cache_sharding=self._cache_sharding)

  def _traced_pack(self, weights, layout):
    self.programs_built.append(("pack", len(layout)))
    return decode_weights.pack_panels(weights, layout)

  def _traced_decode(self, params, cache, logits, cache_start, active, limit, sampling, seed,
                     stream, stop):
    capacity = models.cache_capacity(cache)
    self.programs_built.append(("decode", tuple(logits.shape[:1]), capacity))
    return programs.decode(self.model_config, params, cache, logits, cache_start, active, limit,
                           sampling, seed, stream, stop, max_new_tokens=self.config.max_new_tokens,
                           decode_attention=self.attention_kernel)

  def decode_params(self, params: Any) -> Any:
    """The weights the decode loop runs on: `params`, with its matrices packed for the CPU matmul
    kernel when decode uses it (made once per parameters, `decode_weights.PackedWeightsCache`)."""
    return params if self.decode_matmul is None else self.packed_weights(params)

  def prefill_params(self, params: Any) -> Any:
    """The weights prefill runs on: as `decode_params`, for `SamplerConfig.prefill_matmul`."""
    return params if self.prefill_matmul is None else self.packed_weights(params)

  def release_packed_weights(self) -> None:
    """Frees the packed copy of the weights (`decode_params`, `prefill_params`) until the next
    `generate`: for a caller whose parameters are about to change (a training step's update), so
    that the copy does not sit in memory beside the update's buffers."""
    if self.packed_weights is not None:
      self.packed_weights.clear()

  def num_compiles(self) -> int:
    """Programs this sampler has compiled (or fetched from the persistent cache) so far."""
    return len(self.programs_built)

  def _put_batch(self, array: np.ndarray):
    if self.mesh is None:
      return array
    return shd.put_host_array(array, shd.batch_sharding(self.mesh, "rollout", array.ndim))

  def generate(self, params: Any, prompts: Sequence[np.ndarray], *, num_samples: int = 1,
               max_new_tokens: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, seed: int = 0) -> SampleBatch:
    """Samples `num_samples` completions per prompt (prompt-major order).

    Args:
      params: model weights (under the rollout sharding when the sampler has a mesh).
      prompts: int token-id arrays, unpadded, of any lengths up to the largest prompt bucket.
      num_samples: completions per prompt.
      max_new_tokens: this call's budget, at most `SamplerConfig.max_new_tokens` (the default).
      temperature: 0 is greedy.
      top_p, top_k: nucleus and top-k truncation (1.0 and 0 turn them off).
      seed: the random seed; the same seed and inputs give the same completions.
    """
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty")
      if len(p) > max(self.config.prompt_buckets):
        raise ValueError(
            f"prompt {i} has {len(p)} tokens, more than the largest prompt bucket "
            f"{max(self.config.prompt_buckets)}; add a bucket to SamplerConfig.prompt_buckets")
    limit = self.config.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    if not 1 <= limit <= self.config.max_new_tokens:
      raise ValueError(f"max_new_tokens must be in [1, {self.config.max_new_tokens}] (the cache "
                       f"is sized by SamplerConfig.max_new_tokens); got {limit}")
    sampling = SamplingParams.create(temperature, top_p, top_k)
    if self.mesh is not None:
      params = jax.device_put(params, self._param_shardings)  # no copy when already placed
    # The weights of the prefills and of the decode loops, packed once per call when packed.
    prefill_params, step_params = self.prefill_params(params), self.decode_params(params)

    keys = None if not self.config.share_prefix else [p.tobytes() for p in prompts]
    plan = batching.plan_microbatches(
        [len(p) for p in prompts], keys, num_samples, self.config.prompt_buckets,
        self.rows_per_batch, batch_buckets=self.config.batch_buckets,
        batch_multiple=self.batch_multiple,
        decode_loop_tokens=self.config.decode_step_tokens * limit)
    num_rows = len(prompts) * num_samples
    tokens: list[np.ndarray | None] = [None] * num_rows
    logprobs: list[np.ndarray | None] = [None] * num_rows
    sampling_logprobs: list[np.ndarray | None] = [None] * num_rows
    stopped = np.zeros((num_rows,), bool)
    for stream, micro in enumerate(plan):
      out = self._run_microbatch(prefill_params, step_params, prompts, micro, limit, sampling,
                                 seed, stream)
      for i, r in enumerate(micro.out_rows):
        n = int(out.lengths[i])
        toks = out.tokens[i, :n]
        row_stopped = bool(out.stopped[i])
        if not row_stopped:
          cut = cut_at_stop_string(toks, self.config.stop_strings, self.tokenizer)
          if cut is not None:
            n, row_stopped = cut, True
        tokens[r] = out.tokens[i, :n].copy()
        logprobs[r] = out.logprobs[i, :n].copy()
        sampling_logprobs[r] = out.sampling_logprobs[i, :n].copy()
        stopped[r] = row_stopped
    lengths = np.asarray([len(t) for t in tokens], np.int32)
    return SampleBatch(tokens, logprobs, sampling_logprobs, lengths, stopped)

  def _run_microbatch(self, prefill_params, step_params, prompts, micro: batching.MicroBatch,
                      limit: int, sampling: SamplingParams, seed: int, stream: int):
    """One prefill of the micro-batch's prompts with `prefill_params` (`prefill_params`), one
    decode loop with `step_params` (`decode_params`)."""
    num_unique = batching.pick_bucket(len(micro.unique_prompts), self.config.batch_buckets,
                                      self.batch_multiple)
    num_rows = batching.pick_bucket(len(micro.out_rows), self.config.batch_buckets,
                                    self.batch_multiple)
    tokens, cache_start = batching.left_pad([prompts[i] for i in micro.unique_prompts],
                                            micro.prompt_bucket, num_unique, self.pad_id)
    row_source = np.zeros((num_rows,), np.int32)
    row_source[:len(micro.row_source)] = micro.row_source
    active = np.arange(num_rows) < len(micro.out_rows)
    capacity = micro.prompt_bucket + self.config.max_new_tokens
    cache, logits, row_start = self._prefill(
        prefill_params, self._put_batch(tokens), self._put_batch(cache_start),
        self._put_batch(row_source), capacity=capacity)
    out = self._decode(step_params, cache, logits, row_start,
                       self._put_batch(active), np.int32(limit), sampling, np.int32(seed),
                       np.int32(stream), self.stop)
    # Every process gets every row: the agent's host logic runs the same on all of them.
    return shd.to_host(out._replace(cache=None))
