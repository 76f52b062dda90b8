"""`memtrain compile`: compile one training step's programs for an accelerator you do not have.

  memtrain compile --config configs/paper/memtrain_qwen2_5_7b.py --target v5p-16 [--out FILE.md]
  memtrain compile --config configs/paper/memtrain_qwen3_4b.py --target v5p-16,h100x8,v5p-64 \
      --out experiments/results/aot.md --append
  memtrain compile --config tests/train/tiny_loop_config.py:tiny --target h100x8 \
      --config.rl.packing.micro_batch_size=8

What it does, on a CPU machine with libtpu (`jax[tpu]`) and the CUDA plugin
(`jax-cuda12-plugin`) installed and no accelerator:
1. It describes the target's devices (`jax.experimental.topologies.get_topology_desc`: a TPU slice
   through libtpu, H100s through a GPU target config; `aot_targets.TARGETS`) and builds the mesh
   the config asks for over them (`sharding.make_mesh(cfg.mesh.shape, devices)`).
2. It takes the model's architecture from the config's model path (its config.json when it is a
   local directory, else a known architecture named in the path, `aot_targets.MODEL_PRESETS`, or
   `--model_preset`): no weights are read.
3. It compiles, with abstract inputs (`jax.ShapeDtypeStruct(shape, dtype, sharding=...)`), the same
   jitted functions one training step runs (`compile_programs`):
   - the compute-dtype rollout copy of the weights (train.py's `rollout_copy`);
   - the sampler's prefill and decode (`Sampler._prefill`, `Sampler._decode`) for every (batch
     bucket, prompt bucket) micro-batch that `sampling.batching.plan_microbatches` makes of the
     step's generate calls, with every prompt at the config's longest prompt (`rollout_calls`);
   - the reference log-probs (`rl.train_step.make_logprob_fn`) and the update
     (`rl.train_step.make_train_step`) at the [num_micro, micro_batch, seq_len] shape that
     `rl.packing.pack_rows` gives one mini-batch of the step's rows at their longest
     (`update_shape`).
4. Per program it reads `compiled.memory_analysis()` (per chip): arguments + outputs - aliases +
   temporaries + generated code, plus the buffers that stay alive outside the program while it
   runs (the train state and the reference weights during rollouts, and so on: "resident"),
   against the chip's HBM. XLA itself only refuses a TPU program whose temporaries exceed HBM and
   never a GPU one, so the sum is checked here.
5. Per step it projects, from analytic FLOPs and the bytes of weights and KV cache, the time the
   programs would take at the chip's peak (`project_step`): a lower bound, not a measurement.

A config that does not fit fails (exit 1) naming the program, the figure and the HBM; `check_fit`
is the same check as a function (for `memtrain train --check_fit`).

Worst case, stated: every prompt is as long as the config allows (`config_lib.longest_prompt_tokens`
for memory updates and recall probes, instruction + memory for final answers), every completion
runs to its token budget, every trajectory is probed, and no group is dropped by DAPO filtering.
Real steps use the same programs or smaller ones (a prompt in a lower bucket; fewer packed lines).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from memtrain_jax import aot_targets
from memtrain_jax.aot_targets import GIB, Target

log = logging.getLogger("memtrain")

HEADROOM_WARNING = 0.10  # programs with less HBM to spare than this are flagged


class DoesNotFitError(RuntimeError):
  """A program of the config needs more memory per chip than the target's HBM."""

  def __init__(self, message: str, report: "CompileReport"):
    super().__init__(message)
    self.report = report


# ----------------------------------------------------------------------------------------------
# Devices.


@functools.lru_cache(maxsize=None)
def target_devices(name: str) -> tuple:
  """The compile-only devices of target `name` (no accelerator needed)."""
  target = aot_targets.find_target(name)
  from jax.experimental.topologies import get_topology_desc
  if target.platform == "tpu":
    # These devices are descriptions only; without this, a second process describing a slice
    # (another `memtrain compile`, a second pytest worker) fails on libtpu's lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      topology = get_topology_desc(platform="tpu", topology_name=target.topology_name,
                                   chip_config_name=target.chip_config_name,
                                   chips_per_host_bounds=(2, 2, 1), num_slices=1,
                                   wrap=target.wrap)
    except Exception as e:  # libtpu missing or too old
      raise RuntimeError(
          f"cannot describe {target.name} without libtpu: install jax[tpu] at this jax version "
          f"(pip install 'jax[tpu]==<jax version>'); {type(e).__name__}: {e}") from e
  else:
    try:
      topology = get_topology_desc(platform="cuda", target_config=aot_targets.H100_TARGET_CONFIG,
                                   topology=target.gpu_topology)
    except Exception as e:
      raise RuntimeError(
          f"cannot describe {target.name} without the CUDA plugin: install jax-cuda12-plugin at "
          f"this jax version; {type(e).__name__}: {e}") from e
  devices = tuple(topology.devices)
  if len(devices) != target.chips:
    raise RuntimeError(f"{target.name}: the topology has {len(devices)} devices, expected "
                       f"{target.chips}")
  return devices


def local_target(devices: Sequence | None = None) -> Target:
  """A `Target` for the attached devices (for `check_fit` inside a real run); HBM from the
  runtime's bytes_limit, 0 where it has none (CPU: no fit check)."""
  import jax
  devices = list(jax.devices() if devices is None else devices)
  stats = {}
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    pass
  kind = devices[0].device_kind
  peak, bandwidth = 0.0, 0.0
  for target in aot_targets.TARGETS.values():
    if target.platform == "cuda" and "H100" in kind or (
        target.platform == "tpu" and target.kind.replace("v5p", "v5") in kind.lower()):
      peak, bandwidth = target.peak_flops, target.hbm_bandwidth
      break
  return Target(name=f"local ({len(devices)} x {kind})", platform=devices[0].platform,
                chips=len(devices), hbm_bytes=int(stats.get("bytes_limit", 0)),
                peak_flops=peak, hbm_bandwidth=bandwidth, description=kind)


@contextlib.contextmanager
def traced_for_platform(platform: str):
  """Traces `models.decoder` as it would be traced on `platform` ("tpu" / "gpu").

  The decoder picks two code paths from `jax.default_backend()` at trace time, not from the mesh
  it runs on: a 16-bit KV cache written through its uint16 bits, and single-row matmuls padded to
  two rows, both for XLA:CPU. On this CPU-only machine the default backend is "cpu" whatever the
  target, so without this a TPU / GPU program would be traced with the CPU workarounds. Only the
  decoder module's view of `jax.default_backend` changes, for the duration of the block.
  """
  from memtrain_jax.models import decoder
  real = decoder.jax
  if real.default_backend() == platform:
    yield
    return

  class _Jax:
    def __getattr__(self, name):
      return getattr(real, name)

    @staticmethod
    def default_backend():
      return platform

  decoder.jax = _Jax()
  try:
    yield
  finally:
    decoder.jax = real


@contextlib.contextmanager
def attention_block_size(block: int | None):
  """Traces the decoder's full-sequence attention with query blocks of `block` tokens instead of
  `decoder.ATTENTION_BLOCK` (None: unchanged).

  Not the program training runs: a way to compile the update programs of long lines where the
  real one cannot be compiled here. The block attention unrolls one attention body per query block
  and per branch of its key-span switch (an 8192-token line: 64 query blocks, ~7 branches each,
  forward, backward and rematerialised forward): the Qwen3-4B train step at 8 x 8192 ran this
  machine's compiler out of 24 GB of host memory after 20 minutes. The figures of the two programs
  differ a little: the Qwen3-4B reference log-probs at 136 x 8 x 8192 on v5p-16 need 14.17 GiB per
  chip with the real 128-token blocks (590 s to compile) and 13.96 GiB with 1024-token blocks
  (180 s), 1.5% less.
  """
  from memtrain_jax.models import decoder
  if block is None or block == decoder.ATTENTION_BLOCK:
    yield
    return
  constant, defaults = decoder.ATTENTION_BLOCK, decoder.causal_attention.__defaults__
  decoder.ATTENTION_BLOCK = block
  decoder.causal_attention.__defaults__ = (block,) + tuple(defaults[1:])
  try:
    yield
  finally:
    decoder.ATTENTION_BLOCK = constant
    decoder.causal_attention.__defaults__ = defaults


# ----------------------------------------------------------------------------------------------
# The model.


def run_options(cfg) -> dict:
  from memtrain_jax.models.config import resolve_dtype
  model = cfg.model
  return dict(param_dtype=str(resolve_dtype(model.param_dtype)),
              compute_dtype=str(resolve_dtype(model.compute_dtype)),
              scan_layers=bool(model.get("scan_layers", False)),
              remat=bool(model.get("remat", False)))


def model_path(cfg) -> str:
  """The training config's model.path, or an eval config's first model's path."""
  if "models" in cfg:
    from memtrain_jax.evaluation import config as eval_config_lib
    return eval_config_lib.model_specs(cfg)[0][1]
  return cfg.model.path


def model_config_for(cfg, preset: str | None = None):
  """(ModelConfig, where its architecture came from) without reading any weights."""
  from memtrain_jax.models.config import ModelConfig
  options = run_options(cfg)
  if preset:
    name = aot_targets.find_preset(preset)
    return ModelConfig.from_hf_config(aot_targets.MODEL_PRESETS[name], **options), f"preset {name}"
  path = model_path(cfg)
  local = os.path.expanduser(path)
  if os.path.isfile(os.path.join(local, "config.json")):
    from memtrain_jax.models.loading import load_hf_config
    return load_hf_config(local, **options), f"{path}/config.json"
  name = aot_targets.preset_for_path(path)
  if name is None:
    raise ValueError(
        f"cannot tell the architecture of model.path={path!r} (no config.json there and no known "
        f"model in its name); pass --model_preset, one of: {', '.join(aot_targets.MODEL_PRESETS)}")
  return (ModelConfig.from_hf_config(aot_targets.MODEL_PRESETS[name], **options),
          f"preset {name} (from the path {path})")


class ShapeOnlyTokenizer:
  """What the sampler needs of a tokenizer to be built: a pad id (none: the model's eos) and stop
  strings as token ids. Each character is one token, so a stop sequence is at least as wide as
  the real one; only the shape of the tiny stop table depends on it."""
  pad_token_id = None

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens
    return [ord(c) % self.vocab_size for c in text]


# ----------------------------------------------------------------------------------------------
# What one step runs.


@dataclasses.dataclass
class RolloutCall:
  """One kind of `Sampler.generate` call of a step, at its longest prompts."""
  name: str
  prompt_lengths: list[int]
  prompt_keys: list[bytes]  # equal keys share one prefill (identical prompts)
  num_samples: int
  limit: int  # max_new_tokens of the call
  repeats: int = 1  # calls of this kind per step


def _keys(ids: Sequence[int]) -> list[bytes]:
  return [int(i).to_bytes(8, "little") for i in ids]


def is_eval_config(cfg) -> bool:
  return "models" in cfg and "long_qa" in cfg and "train" not in cfg


def rollout_calls(cfg) -> list[RolloutCall]:
  """The generate calls of one training step, every prompt at the longest the config allows."""
  from memtrain_jax import config_lib
  agent = cfg.agent
  docs, group = cfg.train.batch_documents, cfg.objectives.end_to_end.num_rollouts
  rows = docs * group
  if cfg.task.name == "search_qa":
    search = cfg.task.search_qa
    longest = config_lib.longest_prompt_tokens(cfg)
    calls = [RolloutCall("search turn 1", [agent.prompt_max_tokens] * rows,
                         _keys(np.repeat(np.arange(docs), group)), 1, search.max_response_tokens)]
    if search.max_turns > 1:
      calls.append(RolloutCall("search turns 2+", [longest] * rows, _keys(range(rows)), 1,
                               search.max_response_tokens, repeats=search.max_turns - 1))
    return calls
  longest = config_lib.longest_prompt_tokens(cfg)
  answer = agent.prompt_max_tokens + agent.memory_max_tokens
  chunks = max_chunks(cfg)
  calls = [RolloutCall("memory update, chunk 1", [longest] * docs, _keys(range(docs)), group,
                       agent.memory_max_tokens)]
  if chunks > 1:
    calls.append(RolloutCall("memory update, chunks 2+", [longest] * rows, _keys(range(rows)), 1,
                             agent.memory_max_tokens, repeats=chunks - 1))
  calls.append(RolloutCall("final answer", [answer] * rows, _keys(range(rows)), 1,
                           agent.answer_max_tokens))
  if cfg.objectives.recall.enabled:
    calls.append(RolloutCall("recall probes", [longest] * rows, _keys(range(rows)),
                             cfg.objectives.recall.num_samples, agent.recall_max_tokens))
  return calls


def max_chunks(cfg) -> int:
  """Chunks of the longest document: data.chunking.max_chunks, or for task RL on long-text QA the
  longest target context over the chunk size."""
  if cfg.task.name == "long_qa":
    return int(math.ceil(max(cfg.task.long_qa.target_tokens) / cfg.data.chunking.chunk_size))
  return int(cfg.data.chunking.max_chunks)


@dataclasses.dataclass(frozen=True)
class SamplerShape:
  """One micro-batch's programs: prefill [unique, prompt] -> decode [rows] over capacity slots."""
  unique: int
  prompt: int
  rows: int
  capacity: int


def plan_rollout_shapes(calls: Sequence[RolloutCall], sampler) -> list[tuple[RolloutCall, list]]:
  """Each call's micro-batches as `sampling.batching.plan_microbatches` cuts them, as shapes."""
  from memtrain_jax.sampling import batching
  config = sampler.config
  out = []
  for call in calls:
    plan = batching.plan_microbatches(
        call.prompt_lengths, call.prompt_keys if config.share_prefix else None, call.num_samples,
        config.prompt_buckets, sampler.rows_per_batch, batch_buckets=config.batch_buckets,
        batch_multiple=sampler.batch_multiple,
        decode_loop_tokens=config.decode_step_tokens * call.limit)
    shapes = []
    for micro in plan:
      unique = batching.pick_bucket(len(micro.unique_prompts), config.batch_buckets,
                                    sampler.batch_multiple)
      rows = batching.pick_bucket(len(micro.out_rows), config.batch_buckets,
                                  sampler.batch_multiple)
      shapes.append(SamplerShape(unique, micro.prompt_bucket, rows,
                                 micro.prompt_bucket + config.max_new_tokens))
    out.append((call, shapes))
  return out


def worst_case_rows(cfg, vocab_size: int):
  """`InteractionRows` of one step with every prompt and completion at its longest.

  Memory-agent rows: G1 trajectories per document, `max_chunks` memory updates each (the first
  one's prompt shared by the document's G1 rows), a final answer, and one recall probe per
  trajectory with G2 answers sharing its prompt. Search rows: one per turn of each episode.
  """
  from memtrain_jax import config_lib
  from memtrain_jax.agent.rows import InteractionRows, RowKind
  agent = cfg.agent
  docs, group = cfg.train.batch_documents, cfg.objectives.end_to_end.num_rollouts
  longest = config_lib.longest_prompt_tokens(cfg)
  prompts, completions, kinds, samples, groups = [], [], [], [], []
  next_prompt = [0]

  def prompt(length, key=None):
    if key is None:
      key = next_prompt[0]
      next_prompt[0] += 1
    tokens = np.zeros((length,), np.int32)
    tokens[0], tokens[1 % length] = key % vocab_size, key // vocab_size
    return tokens

  def add(prompt_tokens, completion_len, kind, sample, grp):
    prompts.append(prompt_tokens)
    completions.append(np.ones((completion_len,), np.int32))
    kinds.append(int(kind))
    samples.append(sample)
    groups.append(grp)

  rows = docs * group
  if cfg.task.name == "search_qa":
    search = cfg.task.search_qa
    first = [prompt(agent.prompt_max_tokens) for _ in range(docs)]
    for j in range(rows):
      add(first[j // group], search.max_response_tokens, RowKind.MEMORY_UPDATE, j, j // group)
      for _ in range(search.max_turns - 1):
        add(prompt(longest), search.max_response_tokens, RowKind.MEMORY_UPDATE, j, j // group)
  else:
    first = [prompt(longest) for _ in range(docs)]
    answer = agent.prompt_max_tokens + agent.memory_max_tokens
    for j in range(rows):
      add(first[j // group], agent.memory_max_tokens, RowKind.MEMORY_UPDATE, j, j // group)
      for _ in range(max_chunks(cfg) - 1):
        add(prompt(longest), agent.memory_max_tokens, RowKind.MEMORY_UPDATE, j, j // group)
      add(prompt(answer), agent.answer_max_tokens, RowKind.FINAL_ANSWER, j, j // group)
    if cfg.objectives.recall.enabled:
      g2 = cfg.objectives.recall.num_samples
      for p in range(rows):
        probe = prompt(longest)
        for s in range(g2):
          add(probe, agent.recall_max_tokens, RowKind.RECALL, rows + p * g2 + s, docs + p)
  n = len(prompts)
  return InteractionRows(
      prompt_tokens=prompts, completion_tokens=completions,
      completion_logprobs=[np.zeros(c.shape, np.float32) for c in completions],
      sample_id=np.asarray(samples, np.int32), group_id=np.asarray(groups, np.int32),
      trajectory_id=np.asarray(samples, np.int32), step=np.zeros((n,), np.int32),
      kind=np.asarray(kinds, np.int8), advantage=np.ones((n,), np.float32))


@dataclasses.dataclass
class UpdateShape:
  """The packed shape of the update programs and the work of one step's updates."""
  num_micro: int
  micro_batch: int
  seq_len: int
  updates: int  # optimizer updates per step (ppo_epochs x mini-batches)
  rows: int
  slots: int  # packed slots over the step's mini-batches (matmul work, padding included)
  loss_tokens: int  # slots that predict a completion token (the output projection's work)
  attention_pairs: int  # (query, key) pairs attention can see, over all mini-batches
  note: str


def _attention_pairs(packed) -> int:
  """Visible (query, key) pairs of packed lines: per item, trunk t and branches b_i: t(t+1)/2 +
  sum_i (b_i t + b_i(b_i+1)/2); padding attends to padding causally."""
  total = 0
  seg = packed.segment_ids.reshape(-1, packed.segment_ids.shape[-1])
  br = packed.branch_ids.reshape(seg.shape)
  for line_seg, line_br in zip(seg, br):
    key = line_seg.astype(np.int64) * (1 << 20) + line_br
    values, counts = np.unique(key, return_counts=True)
    trunks = {}
    for value, count in zip(values, counts):
      if value % (1 << 20) == 0:
        trunks[value >> 20] = int(count)
    for value, count in zip(values, counts):
      s, b, c = int(value >> 20), int(value % (1 << 20)), int(count)
      if b == 0:
        total += c * (c + 1) // 2
      else:
        total += c * trunks.get(s, 0) + c * (c + 1) // 2
  return total


def update_shape(cfg, vocab_size: int) -> UpdateShape:
  """Packs the worst-case rows of one step as `run_updates` does (`train.split_mini_batches`,
  `rl.packing.pack_rows`); the update compiles for the largest mini-batch's shape."""
  from memtrain_jax import config_lib
  from memtrain_jax.rl import packing as packing_lib
  from memtrain_jax.seeding import derive_seed
  from memtrain_jax.train import split_mini_batches
  rows = worst_case_rows(cfg, vocab_size)
  packing_cfg = config_lib.packing_config(cfg)
  shapes, slots, loss, pairs = [], 0, 0, 0
  for epoch in range(cfg.rl.ppo_epochs):
    for mini in split_mini_batches(rows, cfg.rl.num_mini_batches,
                                   derive_seed(cfg.train.seed, 1, 10 + epoch)):
      packed = packing_lib.pack_rows(mini, packing_cfg)
      shapes.append(packed.tokens.shape)
      slots += packed.tokens.size
      loss += int(packed.loss_mask.sum())
      pairs += _attention_pairs(packed)
  num_micro = max(s[0] for s in shapes)
  counts = sorted({s[0] for s in shapes})
  note = (f"{len(rows)} rows at their longest packed into {len(shapes)} mini-batch(es) of "
          f"{'/'.join(map(str, counts))} micro-batches of {packing_cfg.micro_batch_size} x "
          f"{packing_cfg.seq_len}; compiled for the largest")
  return UpdateShape(num_micro, packing_cfg.micro_batch_size, packing_cfg.seq_len, len(shapes),
                     len(rows), slots, loss, pairs, note)


# ----------------------------------------------------------------------------------------------
# Programs.


def _abstract(shapes, shardings):
  import jax
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def bytes_per_chip(tree) -> int:
  """Bytes of a pytree of sharded ShapeDtypeStructs on the chip holding the most of it."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass
class ProgramSpec:
  name: str
  stage: str  # "rollout" | "update"
  shape: str
  lower: Callable[[], Any]  # -> jax.stages.Lowered
  resident: int  # bytes per chip alive outside the program while it runs
  resident_note: str
  key: str  # identical programs share one compile
  uses: int = 1  # runs per step (for the projection)
  flops: float = 0.0  # per run, all chips
  bytes_per_chip: float = 0.0  # HBM traffic per run and chip (weights, caches)
  steps: int = 1  # sequential steps of the run (a decode loop's tokens)
  attention_block: int | None = None  # see `attention_block_size`
  breakdown: str = ""  # the large arrays of the program, per chip (analytic)


@dataclasses.dataclass
class ProgramResult:
  name: str
  stage: str
  shape: str
  arguments: int = 0
  outputs: int = 0
  aliases: int = 0
  temporaries: int = 0
  code: int = 0
  resident: int = 0
  resident_note: str = ""
  compile_seconds: float = 0.0
  hbm: int = 0
  error: str = ""
  note: str = ""
  breakdown: str = ""

  @property
  def program_total(self) -> int:
    return self.arguments + self.outputs - self.aliases + self.temporaries + self.code

  @property
  def peak(self) -> int:
    return self.program_total + self.resident

  @property
  def headroom(self) -> float:
    return (self.hbm - self.peak) / self.hbm if self.hbm else float("nan")

  @property
  def fits(self) -> bool:
    return not self.error and (not self.hbm or self.peak <= self.hbm)

  def dominant(self) -> str:
    parts = {"arguments": self.arguments, "outputs": self.outputs - self.aliases,
             "temporaries": self.temporaries, "resident": self.resident}
    name = max(parts, key=parts.get)
    return f"{name} {parts[name] / GIB:.1f} GiB"

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(program_total=self.program_total, peak=self.peak, headroom=self.headroom,
               fits=self.fits)
    return out


@dataclasses.dataclass
class CompileContext:
  """Everything the programs are built from."""
  cfg: Any
  target: Target
  mesh: Any
  model_config: Any
  model_source: str


def _sampling_params(cfg):
  from memtrain_jax.sampling.logits import SamplingParams
  sampling = cfg.sampling
  return SamplingParams.create(sampling.temperature, sampling.top_p, sampling.top_k)


def _forward_flops(model_config, tokens: float, loss_tokens: float, pairs: float) -> float:
  """Forward FLOPs: 2 per weight multiply-add of every slot through the layers, the output
  projection for loss tokens, and 2 x 2 x head_dim per visible (query, key) pair and head."""
  layers = model_config.flops_per_token(0, head=False)
  head = model_config.flops_per_token(0) - layers
  attention = 4.0 * model_config.num_layers * model_config.num_heads * model_config.head_dim
  return layers * tokens + head * loss_tokens + attention * pairs


def _kv_bytes_per_slot(model_config, dtype) -> int:
  return (2 * model_config.num_layers * model_config.num_kv_heads * model_config.head_dim *
          np.dtype(dtype).itemsize)


def training_programs(ctx: CompileContext) -> tuple[list[ProgramSpec], dict]:
  """The programs one training step runs, as lowerable specs, and notes on how they were sized."""
  import jax
  from memtrain_jax import config_lib, models
  from memtrain_jax import sharding as shd
  from memtrain_jax.rl import train_step as step_lib
  from memtrain_jax.rl.packing import PackedBatch
  from memtrain_jax.sampling.sampler import Sampler
  from memtrain_jax.train import sampler_config

  cfg, mesh, mc = ctx.cfg, ctx.mesh, ctx.model_config
  step_lib.check_micro_batch_size(cfg.rl.packing.micro_batch_size, mesh)
  base = (repr(mc), tuple(mesh.shape.items()), ctx.target.name)
  param_shapes = models.param_shapes(mc)
  params = _abstract(param_shapes, shd.param_shardings(mc, mesh, "train"))
  rollout_shardings = shd.param_shardings(mc, mesh, "rollout")
  rollout_params = _abstract(
      jax.eval_shape(functools.partial(models.compute_params, mc), param_shapes), rollout_shardings)
  optimizer = step_lib.make_optimizer(config_lib.optim_section(cfg),
                                      config_lib.updates_per_step(cfg))
  state = step_lib.abstract_state(mc, optimizer, mesh)
  loss_cfg = config_lib.loss_config(cfg)
  kl = loss_cfg.kl_coef != 0.0
  state_bytes, params_bytes = bytes_per_chip(state), bytes_per_chip(params)
  ref_bytes = params_bytes if kl else 0
  rollout_bytes = bytes_per_chip(rollout_params)
  specs: list[ProgramSpec] = []
  notes = {"param_bytes_per_chip": params_bytes, "state_bytes_per_chip": state_bytes,
           "rollout_weight_bytes_per_chip": rollout_bytes, "kl": kl}

  # 1. The rollout copy of the weights.
  ref_note = " + reference weights" if kl else ""
  if mc.dtype != mc.weight_dtype:
    copy = jax.jit(functools.partial(models.compute_params, mc), out_shardings=rollout_shardings)
    specs.append(ProgramSpec(
        "rollout copy", "rollout", f"{mc.weight_dtype.name} -> {mc.dtype.name}",
        lambda: copy.lower(params), state_bytes - params_bytes + ref_bytes,
        "optimizer state" + ref_note, repr(base + ("copy",)),
        bytes_per_chip=params_bytes + rollout_bytes))
  else:
    notes["rollout_copy"] = ("the weights are in the compute dtype: the rollouts read them "
                             "through a device_put into the rollout sharding (not compiled here)")

  # 2. The sampler's prefill and decode programs.
  sampler = Sampler(mc, ShapeOnlyTokenizer(mc.vocab_size), sampler_config(cfg), mesh=mesh)
  notes["decode_attention"] = "XLA" if sampler.attention_kernel is None else "CPU kernel"
  notes["decode_matmul"] = "XLA" if sampler.decode_matmul is None else "CPU kernel"
  notes["cache_dtype"] = np.dtype(sampler.cache_dtype).name
  plans = plan_rollout_shapes(rollout_calls(cfg), sampler)
  notes["rollout_calls"] = [
      {"call": c.name, "rows": len(c.prompt_lengths) * c.num_samples, "repeats": c.repeats,
       "micro_batches": [dataclasses.asdict(s) for s in shapes]} for c, shapes in plans]
  specs += sampler_programs(ctx, sampler, plans, rollout_params,
                            resident=state_bytes + ref_bytes,
                            resident_note="train state" + ref_note, key=base)

  # 3. Reference log-probs and 4. the update, at the packed shape.
  shape = update_shape(cfg, mc.vocab_size)
  notes["update"] = dataclasses.asdict(shape)
  batch_sharding = step_lib.packed_batch_sharding(mesh)
  dims = (shape.num_micro, shape.micro_batch, shape.seq_len)
  int_fields = {"tokens", "targets", "positions", "segment_ids", "branch_ids", "row_num_tokens"}

  def batch(fields):
    return {name: jax.ShapeDtypeStruct(dims, np.int32 if name in int_fields else np.float32,
                                       sharding=batch_sharding) for name in fields}

  assert set(step_lib.TRAIN_BATCH_FIELDS) <= {f.name for f in dataclasses.fields(PackedBatch)}
  chunk = cfg.rl.packing.logprob_chunk_size
  forward = _forward_flops(mc, shape.slots, shape.loss_tokens, shape.attention_pairs)
  per_update = forward / max(shape.updates, 1)
  shape_text = "x".join(map(str, dims))
  if kl:
    logprob = step_lib.make_logprob_fn(mc, mesh, chunk_size=chunk)
    logprob_batch = batch(step_lib.LOGPROB_BATCH_FIELDS)
    specs.append(ProgramSpec(
        "reference log-probs", "update", shape_text,
        lambda: logprob.jitted.lower(params, logprob_batch), state_bytes, "train state",
        repr(base + ("logprob", dims, chunk)), uses=shape.updates, flops=per_update,
        bytes_per_chip=params_bytes))
  train_step = step_lib.make_train_step(mc, loss_cfg, optimizer, mesh, chunk_size=chunk)
  train_batch = batch(step_lib.TRAIN_BATCH_FIELDS + (("ref_logp",) if kl else ()))
  # Backward = 2 forwards; remat recomputes the layers' forward once more.
  factor = 4.0 if mc.remat else 3.0
  specs.append(ProgramSpec(
      "train step", "update", shape_text, lambda: train_step.lower(state, train_batch), ref_bytes,
      "reference weights" if kl else "",
      repr(base + ("train", dims, chunk, repr(loss_cfg), cfg.optim.to_json(),
                   config_lib.updates_per_step(cfg))),
      uses=shape.updates, flops=factor * per_update, bytes_per_chip=3 * state_bytes))
  return specs, notes


def sampler_programs(ctx: CompileContext, sampler, plans, rollout_params, *, resident: int,
                     resident_note: str, key: tuple) -> list[ProgramSpec]:
  """Prefill and decode programs of every distinct micro-batch shape (uses counted per step)."""
  import jax
  from memtrain_jax import sharding as shd
  mc, mesh = ctx.model_config, ctx.mesh
  cfg = ctx.cfg
  weight_bytes = bytes_per_chip(rollout_params)
  kv_slot = _kv_bytes_per_slot(mc, sampler.cache_dtype)
  batch_axis = shd.batch_sharding(mesh, "rollout", 1)
  shards = sampler.batch_multiple
  tensor = int(mesh.shape["tensor"])
  kv_shards = shards * min(tensor, mc.num_kv_heads)
  uses_prefill: dict[tuple, int] = {}
  uses_decode: dict[tuple, tuple[int, int]] = {}
  for call, shapes in plans:
    for s in shapes:
      uses_prefill[(s.unique, s.prompt, s.rows, s.capacity)] = (
          uses_prefill.get((s.unique, s.prompt, s.rows, s.capacity), 0) + call.repeats)
      n, limit = uses_decode.get((s.rows, s.capacity), (0, 0))
      uses_decode[(s.rows, s.capacity)] = (n + call.repeats, max(limit, call.limit))
  config_key = repr(sampler.config)
  prefill_compiled: dict[tuple, Any] = {}

  def batch_struct(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, "rollout",
                                                                          len(shape)))

  def lower_prefill(unique, prompt, rows, capacity):
    return sampler._prefill.lower(  # pylint: disable=protected-access
        rollout_params, batch_struct((unique, prompt), np.int32),
        batch_struct((unique,), np.int32), batch_struct((rows,), np.int32), capacity=capacity)

  def prefill_outputs(rows, capacity):
    """The decode's inputs as the prefill hands them over (shapes and shardings): the outputs of
    the smallest prefill with these rows and slots (compiled already, so jax's in-memory cache of
    executables returns it). If that prefill does not compile (too big for the chip), its output
    shapes with the cache's sharding constraint and the batch sharding for the rest."""
    if (rows, capacity) not in prefill_compiled:
      unique, prompt = min(((u, p) for (u, p, r, c) in uses_prefill if (r, c) == (rows, capacity)),
                           key=lambda up: up[0] * up[1])
      try:
        with traced_for_platform(mesh.devices.flat[0].platform):
          out = lower_prefill(unique, prompt, rows, capacity).compile().out_info
      except Exception:  # pylint: disable=broad-except
        with traced_for_platform(mesh.devices.flat[0].platform):
          out = jax.eval_shape(
              functools.partial(sampler._prefill, capacity=capacity),  # pylint: disable=protected-access
              rollout_params, batch_struct((unique, prompt), np.int32),
              batch_struct((unique,), np.int32), batch_struct((rows,), np.int32))
        cache, logits, row_start = out
        cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=sampler._cache_sharding(x)), cache)  # pylint: disable=protected-access
        out = (cache, batch_struct(logits.shape, logits.dtype),
               batch_struct(row_start.shape, row_start.dtype))
      prefill_compiled[(rows, capacity)] = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding), out)
    return prefill_compiled[(rows, capacity)]

  def lower_decode(rows, capacity, limit):
    cache, logits, row_start = prefill_outputs(rows, capacity)
    return sampler._decode.lower(  # pylint: disable=protected-access
        rollout_params, cache, logits, row_start, batch_struct((rows,), np.bool_),
        np.int32(limit), _sampling_params(cfg), np.int32(0), np.int32(0), sampler.stop)

  del batch_axis
  specs = []
  layers = mc.flops_per_token(0, head=False)
  head = mc.flops_per_token(0) - layers
  per_context = 4.0 * mc.num_layers * mc.num_heads * mc.head_dim
  for (unique, prompt, rows, capacity), uses in sorted(uses_prefill.items()):
    # Every position through the layers, causal attention over the prompt, logits for the last.
    flops = unique * (layers * prompt + per_context * prompt * (prompt + 1) / 2 + head)
    traffic = weight_bytes + kv_slot * (unique * prompt + rows * capacity) / kv_shards
    local_unique, local_heads = max(unique // shards, 1), max(mc.num_heads // tensor, 1)
    breakdown = (
        f"weights {weight_bytes / GIB:.2f}, prompt cache {kv_slot * unique * prompt / kv_shards / GIB:.2f}"
        f", expanded cache {kv_slot * rows * capacity / kv_shards / GIB:.2f}, one layer's "
        f"[{local_unique}x{prompt}x{prompt}] mask {local_unique * prompt * prompt / GIB:.2f} and "
        f"[{local_unique}x{local_heads}x{min(prompt, 128)}x{prompt}] f32 scores per query block "
        f"{local_unique * local_heads * min(prompt, 128) * prompt * 4 / GIB:.2f}, "
        f"[{local_unique}x{prompt}x{mc.intermediate_size}] MLP activations "
        f"{local_unique * prompt * mc.intermediate_size * np.dtype(mc.dtype).itemsize / GIB:.2f} GiB")
    specs.append(ProgramSpec(
        "prefill", "rollout", f"{unique}x{prompt} -> {rows} rows x {capacity} slots",
        functools.partial(lower_prefill, unique, prompt, rows, capacity), resident, resident_note,
        repr(key + ("prefill", unique, prompt, rows, capacity, config_key)), uses=uses,
        flops=flops, bytes_per_chip=traffic, breakdown=breakdown))
  for (rows, capacity), (uses, limit) in sorted(uses_decode.items()):
    # Per token: every row through the weights and the output projection, attention over the
    # whole cache (XLA's attention reads every slot); each step reads the weights and the cache.
    flops = rows * (layers + head + per_context * capacity)
    traffic = weight_bytes + kv_slot * rows * capacity / kv_shards
    breakdown = (f"weights {weight_bytes / GIB:.2f}, cache {kv_slot * rows * capacity / kv_shards / GIB:.2f} GiB "
                 f"(donated), [{max(rows // shards, 1)}x{max(mc.num_heads // tensor, 1)}x{capacity}] "
                 f"f32 scores {max(rows // shards, 1) * max(mc.num_heads // tensor, 1) * capacity * 4 / GIB:.3f} GiB")
    specs.append(ProgramSpec(
        "decode", "rollout", f"{rows} rows x {capacity} slots, {limit} tokens",
        functools.partial(lower_decode, rows, capacity, sampler.config.max_new_tokens), resident,
        resident_note, repr(key + ("decode", rows, capacity, config_key)), uses=uses,
        flops=flops, bytes_per_chip=traffic, steps=limit, breakdown=breakdown))
  return specs


def eval_programs(ctx: CompileContext) -> tuple[list[ProgramSpec], dict]:
  """The evaluation's sampler programs (`memtrain eval`): the memory agent's and the
  full-context baseline's long-QA calls and the search agent's turns, for one model."""
  from memtrain_jax import models
  from memtrain_jax import sharding as shd
  from memtrain_jax.evaluation import config as config_lib
  from memtrain_jax.evaluation import runner
  from memtrain_jax.sampling.sampler import Sampler

  cfg, mesh, mc = ctx.cfg, ctx.mesh, ctx.model_config
  base = (repr(mc), tuple(mesh.shape.items()), ctx.target.name)
  # The evaluation loads the weights straight into the rollout sharding in param_dtype.
  params = _abstract(models.param_shapes(mc), shd.param_shardings(mc, mesh, "rollout"))
  notes = {"param_bytes_per_chip": bytes_per_chip(params)}
  specs: list[ProgramSpec] = []
  agent = cfg.agent
  if cfg.long_qa.enabled:
    sampler = Sampler(mc, ShapeOnlyTokenizer(mc.vocab_size), runner.long_qa_sampler_config(cfg),
                      mesh=mesh)
    questions = cfg.long_qa.question_count or 128  # MemAgent's files hold 128 questions
    longest = agent.prompt_max_tokens + agent.memory_max_tokens + agent.chunk_size
    calls = [RolloutCall("memory agent updates", [longest] * questions, _keys(range(questions)),
                         1, agent.memory_max_tokens),
             RolloutCall("memory agent answers",
                         [agent.prompt_max_tokens + agent.memory_max_tokens] * questions,
                         _keys(range(questions)), 1, agent.answer_max_tokens)]
    names = config_lib.task_models(cfg, "long_qa")
    if (config_lib.FULL_CONTEXT in cfg.long_qa.modes and
        any(name in names for name in cfg.long_qa.full_context_models)):
      size = cfg.long_qa.full_context_batch_size or questions
      full = agent.prompt_max_tokens + cfg.long_qa.full_context_max_tokens
      calls.append(RolloutCall("full context", [full] * size, _keys(range(size)), 1,
                               agent.answer_max_tokens))
    plans = plan_rollout_shapes(calls, sampler)
    notes["long_qa_calls"] = [{"call": c.name, "micro_batches": [dataclasses.asdict(s)
                                                                 for s in shapes]}
                              for c, shapes in plans]
    specs += sampler_programs(ctx, sampler, plans, params, resident=0, resident_note="",
                              key=base + ("long_qa",))
  if cfg.search_qa.enabled:
    sampler = Sampler(mc, ShapeOnlyTokenizer(mc.vocab_size), runner.search_sampler_config(cfg),
                      mesh=mesh)
    sq = cfg.search_qa
    rows = sampler.rows_per_batch
    longest = max(sampler.config.prompt_buckets)
    calls = [RolloutCall("search turn", [longest] * rows, _keys(range(rows)), 1,
                         sq.max_response_tokens, repeats=sq.max_turns)]
    plans = plan_rollout_shapes(calls, sampler)
    notes["search_calls"] = [{"call": c.name, "micro_batches": [dataclasses.asdict(s)
                                                                for s in shapes]}
                             for c, shapes in plans]
    specs += sampler_programs(ctx, sampler, plans, params, resident=0, resident_note="",
                              key=base + ("search",))
  return specs, notes


# ----------------------------------------------------------------------------------------------
# Compiling.


_OOM = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available "
                  r"HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def measure(spec: ProgramSpec, target: Target, platform: str) -> ProgramResult:
  """Lowers and compiles one program and reads its per-chip memory."""
  result = ProgramResult(spec.name, spec.stage, spec.shape, resident=spec.resident,
                         resident_note=spec.resident_note, hbm=target.hbm_bytes,
                         breakdown=spec.breakdown)
  if spec.attention_block:
    result.note = f"attention blocks of {spec.attention_block} tokens (attention_block_size)"
  start = time.perf_counter()
  try:
    with traced_for_platform(platform), attention_block_size(spec.attention_block):
      compiled = spec.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    result.compile_seconds = time.perf_counter() - start
    text = str(e)
    match = _OOM.search(text)
    if match:  # XLA's own check: the temporaries alone exceed HBM
      result.temporaries = int(float(match.group(1)) * _UNITS[match.group(2)])
      result.error = f"XLA: temporaries {match.group(1)}{match.group(2)} exceed HBM"
    else:
      result.error = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    return result
  result.compile_seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  if stats is not None:
    result.arguments = int(stats.argument_size_in_bytes)
    result.outputs = int(stats.output_size_in_bytes)
    result.aliases = int(stats.alias_size_in_bytes)
    result.temporaries = int(stats.temp_size_in_bytes)
    result.code = int(stats.generated_code_size_in_bytes)
  return result


@dataclasses.dataclass
class Projection:
  """Per-step FLOPs and the time they and the HBM traffic imply at the chip's peak."""
  rollout_flops: float
  update_flops: float
  rollout_seconds: float
  update_seconds: float
  peak_flops: float
  hbm_bandwidth: float
  lines: list[dict]

  @property
  def step_seconds(self) -> float:
    return self.rollout_seconds + self.update_seconds


def project_step(specs: Sequence[ProgramSpec], target: Target) -> Projection | None:
  """Each program's runs per step at max(FLOPs / peak, bytes / bandwidth) per sequential step."""
  if not target.peak_flops or not target.hbm_bandwidth:
    return None
  lines, totals = [], {"rollout": [0.0, 0.0], "update": [0.0, 0.0]}
  for spec in specs:
    if not spec.flops and not spec.bytes_per_chip:
      continue
    compute = spec.flops / (target.chips * target.peak_flops)
    memory = spec.bytes_per_chip / target.hbm_bandwidth
    seconds = spec.uses * spec.steps * max(compute, memory)
    flops = spec.uses * spec.steps * spec.flops
    totals[spec.stage][0] += flops
    totals[spec.stage][1] += seconds
    lines.append({"program": spec.name, "shape": spec.shape, "runs": spec.uses,
                  "steps": spec.steps, "flops": flops, "seconds": seconds,
                  "bound": "compute" if compute >= memory else "HBM"})
  return Projection(totals["rollout"][0], totals["update"][0], totals["rollout"][1],
                    totals["update"][1], target.peak_flops, target.hbm_bandwidth, lines)


@dataclasses.dataclass
class CompileReport:
  config: str
  target: Target
  model: str
  num_params: int
  mesh: dict
  programs: list[ProgramResult]
  projection: Projection | None
  notes: dict

  @property
  def fits(self) -> bool:
    return all(p.fits for p in self.programs)

  def failures(self) -> list[ProgramResult]:
    return [p for p in self.programs if not p.fits]

  def tight(self, threshold: float = HEADROOM_WARNING) -> list[ProgramResult]:
    return [p for p in self.programs if p.fits and p.hbm and p.headroom < threshold]

  def failure_message(self) -> str:
    lines = []
    for p in self.failures():
      if p.error and not p.error.startswith("XLA: temporaries"):
        lines.append(f"{self.config} on {self.target.name}: {p.name} [{p.shape}] failed to "
                     f"compile: {p.error}")
      else:
        lines.append(
            f"{self.config} on {self.target.name}: {p.name} [{p.shape}] needs "
            f"{p.peak / GIB:.2f} GiB per chip (program {p.program_total / GIB:.2f} GiB: "
            f"arguments {p.arguments / GIB:.2f} + outputs {p.outputs / GIB:.2f} - aliases "
            f"{p.aliases / GIB:.2f} + temporaries {p.temporaries / GIB:.2f} + code "
            f"{p.code / GIB:.3f}; resident {p.resident / GIB:.2f} GiB of "
            f"{p.resident_note or 'nothing'}) but the chip has {p.hbm / GIB:.2f} GiB of HBM")
    return "\n".join(lines)

  def as_dict(self) -> dict:
    out = {"config": self.config, "target": dataclasses.asdict(self.target), "model": self.model,
           "num_params": self.num_params, "mesh": self.mesh, "fits": self.fits,
           "programs": [p.as_dict() for p in self.programs], "notes": self.notes}
    if self.projection is not None:
      out["projection"] = dataclasses.asdict(self.projection)
    return out

  def to_markdown(self, heading_level: int = 3) -> str:
    h = "#" * heading_level
    t = self.target
    lines = [f"{h} {self.config} on {t.name}", "",
             f"{t.description}, {t.hbm_bytes / GIB:.2f} GiB HBM per chip; model {self.model} "
             f"({self.num_params / 1e9:.2f}B params); mesh {self.mesh}. "
             + ("**Fits.**" if self.fits else "**Does NOT fit.**"), "",
             "| program | shape | args | out | alias | temp | code | program total | resident "
             "| peak / HBM | headroom | compile s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    g = lambda b: f"{b / GIB:.2f}" if abs(b) >= GIB / 100 or b == 0 else f"{b / (1 << 20):.1f} MiB"
    for p in self.programs:
      if p.error and not p.temporaries:
        lines.append(f"| {p.name} | {p.shape} | | | | | | | | | **error** | "
                     f"{p.compile_seconds:.1f} |")
        continue
      flag = "" if p.fits else " **over**"
      if p.fits and p.hbm and p.headroom < HEADROOM_WARNING:
        flag = " **<10%**"
      lines.append(
          f"| {p.name} | {p.shape} | {g(p.arguments)} | {g(p.outputs)} | {g(p.aliases)} | "
          f"{g(p.temporaries)} | {p.code / (1 << 20):.1f} MiB | {g(p.program_total)} | "
          f"{g(p.resident)} | {g(p.peak)} / {g(p.hbm)} | {100 * p.headroom:.0f}%{flag} | "
          f"{p.compile_seconds:.1f} |")
    lines.append("")
    if t.platform == "cuda":
      lines.append("On a GPU, JAX preallocates 75% of the memory by default "
                   f"({0.75 * t.hbm_bytes / GIB:.1f} GiB here): run with "
                   "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 for the HBM column to apply. ")
    lines.append("GiB per chip. resident: buffers alive outside the program while it runs ("
                 + "; ".join(sorted({f"{p.name}: {p.resident_note}" for p in self.programs
                                     if p.resident_note})) + ").")
    for p in self.programs:
      tight = not p.fits or (p.hbm and p.headroom < HEADROOM_WARNING)
      parts = [p.error, p.note, f"largest arrays per chip: {p.breakdown}" if tight and p.breakdown
               else "", f"{p.dominant()} dominates" if tight and not p.error else ""]
      if any(parts):
        lines.append(f"- {p.name} [{p.shape}]: " + "; ".join(x for x in parts if x))
    if self.projection is not None:
      pr = self.projection
      lines += ["", f"Projection (a lower bound at {pr.peak_flops / 1e12:.0f} TFLOP/s and "
                f"{pr.hbm_bandwidth / 1e9:,.0f} GB/s per chip, every program at its roofline, "
                f"worst-case lengths): rollouts {pr.rollout_flops / 1e15:.1f} PFLOP, "
                f"{pr.rollout_seconds:.1f} s; updates {pr.update_flops / 1e15:.1f} PFLOP, "
                f"{pr.update_seconds:.1f} s; step {pr.step_seconds:.1f} s."]
    return "\n".join(lines)


def _describe_config(path: str) -> str:
  return os.path.relpath(path) if os.path.exists(path.split(".py:")[0] + ".py") else path


def compile_config(cfg, target: Target | str, *, config_name: str = "config",
                   model_preset: str | None = None, devices: Sequence | None = None,
                   cache: dict | None = None, stages: Sequence[str] = ("rollout", "update"),
                   stop_at_first_failure: bool = False, update_attention_block: int | None = None,
                   attention_blocks: dict[str, int] | None = None,
                   echo: Callable[[str], None] | None = None,
                   on_measured: Callable[[], None] | None = None) -> CompileReport:
  """Compiles every program one step of `cfg` runs (or an eval config's programs) for `target`.

  Args:
    cfg: a training config (`config_lib.load_config`) or an eval config.
    target: a `Target` or a name from `aot_targets.TARGETS`.
    config_name: how the report names the config.
    model_preset: the architecture, when the config's model path does not say it.
    devices: the devices to build the mesh over (default: the target's compile-only devices).
    cache: programs already measured (by key), shared between calls: identical programs of
      several configs compile once.
    stages: "rollout" and/or "update" programs.
    stop_at_first_failure: return after the first program that does not fit (the rest are not
      compiled, nor in the report).
    update_attention_block: compile the update programs with attention blocks of this many
      tokens (`attention_block_size`; flagged in the report), where the real ones are too big to
      compile on this machine.
    attention_blocks: the same per program name ("prefill", "train step", ...) or stage
      ("rollout", "update"); a name wins over its stage.
    echo: called with one line per compiled program.
    on_measured: called after each program newly compiled (e.g. to save `cache`).

  Returns:
    The report (it never raises for a program that does not fit; see `check_fit`).
  """
  from memtrain_jax import sharding as shd
  if isinstance(target, str):
    target = aot_targets.find_target(target)
  if devices is None:
    devices = target_devices(target.name)
  mesh = shd.make_mesh(cfg.mesh.shape, devices=list(devices))
  model_config, source = model_config_for(cfg, model_preset)
  ctx = CompileContext(cfg, target, mesh, model_config, source)
  build = eval_programs if is_eval_config(cfg) else training_programs
  specs, notes = build(ctx)
  notes["model_source"] = source
  specs = [s for s in specs if s.stage in stages]
  blocks = dict(attention_blocks or {})
  if update_attention_block:
    blocks.setdefault("update", update_attention_block)
  for spec in specs:
    block = blocks.get(spec.name, blocks.get(spec.stage))
    if block:
      spec.attention_block = block
      spec.key = repr((spec.key, "attention_block", block))
  platform = mesh.devices.flat[0].platform
  cache = {} if cache is None else cache
  results = []
  for spec in specs:
    if spec.key in cache:
      cached = dataclasses.replace(cache[spec.key], resident=spec.resident,
                                   resident_note=spec.resident_note, hbm=target.hbm_bytes)
      results.append(cached)
    else:
      result = measure(spec, target, platform)
      cache[spec.key] = result
      results.append(result)
      if on_measured is not None:
        on_measured()
    if echo is not None:
      r = results[-1]
      echo(f"  {r.name:20s} {r.shape:42s} peak {r.peak / GIB:7.2f} GiB "
           f"({100 * r.headroom:4.0f}% free) compile {r.compile_seconds:6.1f}s"
           + (f"  ERROR {r.error}" if r.error else ""))
    if stop_at_first_failure and not results[-1].fits:
      break
  return CompileReport(config_name, target, f"{model_config.family} {source}",
                       model_config.num_params(), dict(mesh.shape), results,
                       project_step(specs, target), notes)


def check_fit(cfg, target: Target | str | None = None, *, model_preset: str | None = None,
              config_name: str = "config", raise_on_failure: bool = True) -> CompileReport:
  """Compiles the step's programs for `target` (None: the attached devices) and raises
  `DoesNotFitError` naming the program, the figure and the HBM when one does not fit.

  Reads no weights (the architecture comes from the config's model path, `model_config_for`), so
  `memtrain train` can call it before loading anything. With `target=None` on a backend that does
  not report its memory (CPU), every program is compiled and nothing is refused.
  """
  devices = None
  if target is None:
    target = local_target()
    import jax
    devices = jax.devices()
  report = compile_config(cfg, target, model_preset=model_preset, config_name=config_name,
                          devices=devices, stop_at_first_failure=raise_on_failure)
  if raise_on_failure and not report.fits:
    raise DoesNotFitError(report.failure_message(), report)
  return report


# ----------------------------------------------------------------------------------------------
# The command.


def _load(path: str, overrides: Sequence[str]):
  from memtrain_jax import config_lib
  from memtrain_jax.evaluation import config as eval_config_lib
  cfg = config_lib.load_config(path, overrides)
  if is_eval_config(cfg):
    eval_config_lib.validate_eval_config(cfg, check_paths=False)
  else:
    config_lib.validate(cfg)
  return cfg


def load_results(path: str) -> dict:
  """Programs measured before (`save_results`), by program key."""
  if not os.path.exists(path):
    return {}
  names = {f.name for f in dataclasses.fields(ProgramResult)}
  with open(path, encoding="utf-8") as f:
    return {key: ProgramResult(**{k: v for k, v in value.items() if k in names})
            for key, value in json.load(f).items()}


def save_results(path: str, cache: dict) -> None:
  names = [f.name for f in dataclasses.fields(ProgramResult)]
  data = {key: {n: getattr(r, n) for n in names} for key, r in cache.items()}
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(data, f)
  os.replace(path + ".tmp", path)


def summary_rows(reports: Sequence[CompileReport]) -> list[str]:
  """One Markdown row per (config, target): fit, the tightest program, the projection."""
  lines = ["| config | target | mesh | fits | tightest program | its peak / HBM | headroom | "
           "rollouts s | updates s | step s |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
  for r in reports:
    measured = [p for p in r.programs if p.hbm]
    worst = max(measured, key=lambda p: p.peak / p.hbm) if measured else None
    pr = r.projection
    mesh = "x".join(str(v) for v in r.mesh.values())
    fit = "yes" if r.fits else "**NO**"
    if worst is not None and r.fits and worst.headroom < HEADROOM_WARNING:
      fit = "yes, <10% spare"
    cells = [r.config, r.target.name, mesh, fit,
             f"{worst.name} {worst.shape}" if worst else "", 
             f"{worst.peak / GIB:.1f} / {worst.hbm / GIB:.1f}" if worst else "",
             f"{100 * worst.headroom:.0f}%" if worst else "",
             f"{pr.rollout_seconds:.0f}" if pr else "", f"{pr.update_seconds:.0f}" if pr else "",
             f"{pr.step_seconds:.0f}" if pr else ""]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="memtrain compile", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, action="append",
                      help="a configs/*.py file (FILE:arg allowed); repeat for several")
  parser.add_argument("--target", required=True,
                      help=f"comma-separated, of: {', '.join(aot_targets.TARGETS)}")
  parser.add_argument("--model_preset", default=None,
                      help=f"the architecture, of: {', '.join(aot_targets.MODEL_PRESETS)} "
                           "(default: from the config's model path)")
  parser.add_argument("--out", default=None, help="write the tables to FILE (.md or .json)")
  parser.add_argument("--append", action="store_true", help="append to --out instead")
  parser.add_argument("--update_attention_block", type=int, default=None,
                      help="compile the update programs with attention blocks of N tokens "
                           "(flagged; for lines whose real program is too big to compile here)")
  parser.add_argument("--attention_block", action="append", default=[], metavar="PROGRAM=N",
                      help="the same for one program (prefill, train step, reference log-probs) "
                           "or stage (rollout, update); repeatable")
  parser.add_argument("--cache", default=None,
                      help="a JSON file of programs measured before (read, then updated): "
                           "identical programs are not compiled again")
  parser.add_argument("--fail_fast", action="store_true",
                      help="stop at the first program that does not fit")
  parser.add_argument("--stages", default="rollout,update",
                      help="which programs: rollout, update or both (default)")
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith(("--config.", "config."))]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config overrides look like "
                 "--config.rl.packing.micro_batch_size=8")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  logging.getLogger("memtrain").setLevel(logging.INFO)
  if not os.environ.get("JAX_PLATFORMS"):
    import jax
    jax.config.update("jax_platforms", "cpu")  # compile-only devices; never touch a real one
  try:
    targets = [aot_targets.find_target(t) for t in args.target.split(",") if t.strip()]
    configs = [(path, _load(path, overrides)) for path in args.config]
  except (ValueError, FileNotFoundError, TypeError) as e:
    print(f"memtrain compile: bad config or target: {e}", file=sys.stderr)
    return 2
  stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
  try:
    blocks = {item.split("=")[0].strip(): int(item.split("=")[1]) for item in args.attention_block}
  except (IndexError, ValueError):
    parser.error(f"--attention_block takes PROGRAM=N, e.g. 'train step=1024'; got "
                 f"{args.attention_block}")
  reports, cache = [], load_results(args.cache) if args.cache else {}
  for path, cfg in configs:
    for target in targets:
      name = _describe_config(path)
      print(f"{name} on {target.name}:", flush=True)
      start = time.perf_counter()
      try:
        report = compile_config(cfg, target, config_name=name, model_preset=args.model_preset,
                                cache=cache, stages=stages, stop_at_first_failure=args.fail_fast,
                                update_attention_block=args.update_attention_block,
                                attention_blocks=blocks,
                                echo=lambda s: print(s, flush=True),
                                on_measured=(functools.partial(save_results, args.cache, cache)
                                             if args.cache else None))
      except (ValueError, RuntimeError) as e:
        print(f"memtrain compile: {name} on {target.name}: {e}", file=sys.stderr)
        return 2
      print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
      reports.append(report)
  text = "\n\n".join(r.to_markdown() for r in reports)
  print()
  print("\n".join(summary_rows(reports)))
  if args.out:
    mode = "a" if args.append else "w"
    with open(args.out, mode, encoding="utf-8") as f:
      if args.out.endswith(".json"):
        f.write(json.dumps([r.as_dict() for r in reports], indent=1, default=str) + "\n")
      else:
        f.write("\n".join(summary_rows(reports)) + "\n\n" + text + "\n")
  failed = [r for r in reports if not r.fits]
  for r in failed:
    print("memtrain compile: DOES NOT FIT:\n" + r.failure_message(), file=sys.stderr)
  for r in reports:
    for p in r.tight():
      print(f"memtrain compile: {r.config} on {r.target.name}: {p.name} [{p.shape}] leaves "
            f"{100 * p.headroom:.0f}% of HBM ({p.dominant()} dominates)", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
