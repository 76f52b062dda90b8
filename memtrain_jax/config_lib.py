"""The config schema: every section with its defaults, loading from a file, and overrides.

Experiment files under `configs/` (big_vision style) start from `base_config()` and change fields;
`load_config(path, overrides)` imports one, locks it (a misspelt key fails instead of silently
adding a field) and applies command-line overrides such as `--config.rl.kl_coef=0`.

Defaults are CPU-sized where the paper has no say; paper values are noted next to each field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from memtrain_jax.data.config import default_data_config

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  """Every section with its default (unlocked; experiment files change it, `load_config` locks)."""
  cfg = ConfigDict()

  cfg.model = ConfigDict()
  # A local Hugging Face directory, a .gguf file, or 'bundled:smollm2-135m-instruct'.
  cfg.model.path = "bundled:smollm2-135m-instruct"
  cfg.model.param_dtype = "float32"  # paper: bf16 (veRL keeps f32 master weights under FSDP)
  # 'bfloat16' with f32 params: mixed precision (f32 master weights and gradients, bf16 matmuls
  # with f32 accumulation; rollouts sample from a bf16 copy). Updates 1.6-1.7x faster on a Xeon
  # with AMX (experiments/results/train_step*.md); much slower on CPUs without bf16 instructions.
  cfg.model.compute_dtype = "float32"
  cfg.model.scan_layers = False  # lax.scan over stacked layers: faster compiles for deep models
  cfg.model.remat = False  # rematerialise each layer in the backward pass

  cfg.mesh = ConfigDict()
  # (data, fsdp, tensor); one -1 fills the remaining devices.
  cfg.mesh.shape = (1, -1, 1)

  cfg.data = default_data_config()

  # What is trained. 'memtrain': the paper's proxy objectives on built Wikipedia documents
  # (`data`, `objectives`). 'long_qa': MemAgent task RL on RULER-HotpotQA (final-answer reward
  # only, objective 'qa_final_answer'). 'search_qa': MEM1 task RL, a search agent over a retriever.
  # Task RL starts from any checkpoint: set model.path to a MemTrain run's exported <workdir>/hf.
  cfg.task = ConfigDict()
  cfg.task.name = "memtrain"
  cfg.task.long_qa = ConfigDict()
  cfg.task.long_qa.source = "bundled:hotpotqa-dev-50"  # or a HotpotQA json (train split)
  cfg.task.long_qa.question_start = 16  # bundled: questions 0..15 are held out for evaluation
  cfg.task.long_qa.question_count = 0  # 0 = every question from question_start
  # Context lengths in policy tokens; each question is built once per length (MemAgent trains
  # at ~28K tokens = 200 documents with chunk 5000).
  cfg.task.long_qa.target_tokens = (28000,)
  cfg.task.long_qa.seed = 4  # MemAgent's distractor shuffle seed
  # Allowed relative miss of each context's length; one paragraph is ~100-200 tokens, so short
  # CPU-scale contexts need more than the 10% that suits MemAgent's 7K..896K.
  cfg.task.long_qa.length_tolerance = 0.1
  cfg.task.search_qa = ConfigDict()
  cfg.task.search_qa.source = "bundled:hotpotqa-dev-50"  # MEM1: nq_hotpotqa_train_multi_2
  cfg.task.search_qa.question_start = 16
  cfg.task.search_qa.question_count = 0
  cfg.task.search_qa.questions_per_task = 2  # MEM1 / paper: 2 questions per prompt
  cfg.task.search_qa.max_turns = 6  # paper
  cfg.task.search_qa.max_response_tokens = 1000  # paper: 1k
  cfg.task.search_qa.max_obs_tokens = 1000  # paper: 1k
  cfg.task.search_qa.topk = 3  # MEM1
  cfg.task.search_qa.retrieval_url = ""  # '' = in-process BM25 over `corpus`
  cfg.task.search_qa.corpus = "bundled:hotpotqa-dev-50-paragraphs"  # or a JSONL corpus

  # Token budgets of the memory agent (paper §4.1, MemAgent). The chunk size and the number of
  # chunks live in data.chunking (one source of truth for the data and the agent).
  cfg.agent = ConfigDict()
  cfg.agent.prompt_max_tokens = 1024  # instruction + problem (paper: 1024)
  cfg.agent.memory_max_tokens = 1024  # paper: 1024
  cfg.agent.answer_max_tokens = 1024  # final answer (paper: 1024)
  cfg.agent.recall_max_tokens = 1024  # recall answer (paper: not given; MemAgent response 1024)
  cfg.agent.initial_memory = "No previous memory"  # MemAgent
  # Prefilled start of the final-answer and recall replies, e.g. "\\boxed{" for small models
  # that do not follow the format otherwise; '' = none (the paper).
  cfg.agent.answer_prefix = ""

  cfg.sampling = ConfigDict()
  cfg.sampling.temperature = 1.0  # MemAgent rollouts
  cfg.sampling.top_p = 1.0
  cfg.sampling.top_k = 0  # 0 = off
  # Prompt lengths and batch sizes are padded up to these, so a step compiles few programs. Steps
  # of 1.5x and 1.33x rather than 2x pad a prompt by roughly 15% rather than 25% on average (for
  # lengths spread evenly between buckets), for at most twice the prefill and decode programs;
  # micro-batch planning (decode_step_tokens) keeps prompts that straddle two buckets in one
  # micro-batch. Measured on the CPU main job: rollouts 12.4 / 11.0 s against 13.9 / 11.7 s a step
  # with powers of two only, and no more sampler programs (7).
  cfg.sampling.prompt_buckets = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
  cfg.sampling.batch_buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256)
  # KV cache dtype: "auto" = the compute dtype, but f32 for 16-bit compute on CPU when XLA's
  # attention is used (XLA:CPU writes a bf16 cache out of place; the CPU decode-attention kernel
  # writes it in place); or "float32" / "bfloat16".
  cfg.sampling.cache_dtype = "auto"
  # One decode step's cost in prompt tokens of prefill, for planning micro-batches: a few shorter
  # prompts are padded into a micro-batch of longer ones when that is cheaper than a decode loop of
  # their own. ~50 on a 2-core CPU; raise it (hundreds) on GPU/TPU. 0: plan for padding only.
  cfg.sampling.decode_step_tokens = 64
  # Attention of a decode step: "auto" = the multi-threaded CPU kernel on the CPU backend when a
  # C++ compiler builds it (`kernels.decode_attention`), else XLA's; "kernel" requires the kernel;
  # "xla" never uses it. Same result either way; on 2 cores the kernel is 2.3-3.1x faster over a
  # full cache and reads only the slots each row attends (SmolLM2, batch 32, 256 slots, all 30
  # layers: 16-17 vs 38-41 ms on an AVX-512 Xeon, 19-22 vs 48-68 ms on an AVX2 EPYC).
  cfg.sampling.decode_attention = "auto"
  # Matmuls of a decode step: "auto" = the CPU packed-matmul kernel for float32 compute on CPU
  # with weights whole on each device (`kernels.packed_matmul`), else XLA's; "kernel" requires
  # it; "xla" never uses it. It keeps a float32 copy of the weight matrices, packed once per
  # parameters. SmolLM2's decode matmuls on 2 cores: 20 vs 29-33 ms at 4 rows, 38-41 vs 53-58 ms
  # at 32 on an AVX-512 Xeon; 20-22 vs 43-60 and 67-105 vs 104-144 ms on an AVX2 EPYC.
  cfg.sampling.decode_matmul = "auto"
  # Prefill's matmuls: the same settings and kernel, on the same packed copy (it tiles prefill's
  # thousands of rows). SmolLM2 prefill on an AVX2 EPYC, 32 x 128 tokens: 7.6 vs 8.9 s with XLA's.
  cfg.sampling.prefill_matmul = "auto"

  cfg.objectives = ConfigDict()
  cfg.objectives.end_to_end = ConfigDict()
  cfg.objectives.end_to_end.enabled = True
  cfg.objectives.end_to_end.name = "masked_reconstruction"
  cfg.objectives.end_to_end.num_rollouts = 8  # G1 (paper: 8)
  cfg.objectives.end_to_end.module = ""  # a module to import that registers `name` (plug-ins)
  cfg.objectives.end_to_end.problem = ""  # '' = the objective's default question
  cfg.objectives.recall = ConfigDict()
  cfg.objectives.recall.enabled = True  # False: the "End-to-End" ablation
  cfg.objectives.recall.name = "memory_recall"
  cfg.objectives.recall.num_samples = 8  # G2 (paper: 8)
  cfg.objectives.recall.lam = 0.5  # lambda of Eq. 2 (paper: 0.5; 0 = the "Decoupled" ablation)
  cfg.objectives.recall.module = ""  # a module to import that registers `name` (plug-ins)
  cfg.objectives.recall.template = ""  # '' = agent.prompts.RECALL_TEMPLATE
  cfg.objectives.recall.include_final_memory = True  # may k be the last memory (paper: open)

  cfg.rl = ConfigDict()
  # rl.loss.LossConfig fields.
  cfg.rl.aggregation = "interaction_mean"  # the paper's Eq. 4
  cfg.rl.clip_eps_low = 0.2  # paper: not given
  cfg.rl.clip_eps_high = 0.28  # paper: not given (DAPO 0.28; MemAgent's script 0.20)
  cfg.rl.kl_coef = 1e-3  # paper: 1e-3; 0 skips the reference model entirely
  cfg.rl.kl_estimator = "k3"  # MemAgent's low_var_kl
  cfg.rl.max_log_ratio = 20.0
  cfg.rl.norm_length = 0  # 'sequence_sum_norm' only; 0 = agent.answer_max_tokens
  cfg.rl.advantage = ConfigDict()
  cfg.rl.advantage.scale_by_std = False  # Dr. GRPO (paper Eq. 3)
  cfg.rl.advantage.drop_degenerate_e2e = True  # DAPO all-0 / all-1 filtering
  cfg.rl.advantage.drop_degenerate_recall = True  # paper: not given
  # One rollout batch is split into num_mini_batches optimizer updates, repeated ppo_epochs times.
  cfg.rl.ppo_epochs = 1
  cfg.rl.num_mini_batches = 1
  cfg.rl.packing = ConfigDict()
  cfg.rl.packing.seq_len = 8192  # >= prompt + chunk + memory + completion of the longest row
  cfg.rl.packing.micro_batch_size = 1  # lines per micro-batch; a multiple of data * fsdp
  cfg.rl.packing.num_micro_batches_multiple = 4  # fewer distinct shapes, fewer compiles
  cfg.rl.packing.logprob_chunk_size = 512  # positions per chunk of the output projection
  # Rows with one prompt (the G1 first memory updates of a document, the G2 answers to a recall
  # probe) are packed as a prefix tree: the prompt is run once, and the loss and gradient are those
  # of separate rows. False packs every row whole.
  cfg.rl.packing.share_prompts = True

  cfg.optim = ConfigDict()
  cfg.optim.lr = 1e-6  # paper
  cfg.optim.warmup_steps = 20  # MemAgent
  cfg.optim.schedule = "constant"  # or 'cosine'
  cfg.optim.decay_steps = 0  # cosine: total training steps; 0 = train.num_steps
  cfg.optim.min_lr_ratio = 0.0  # cosine floor as a fraction of lr
  cfg.optim.weight_decay = 0.01  # veRL's AdamW default; not applied to norms and biases
  cfg.optim.grad_clip = 1.0  # veRL default
  cfg.optim.b1 = 0.9
  cfg.optim.b2 = 0.999
  cfg.optim.eps = 1e-8

  cfg.train = ConfigDict()
  cfg.train.num_steps = 300  # paper
  cfg.train.batch_documents = 32  # paper
  cfg.train.seed = 0
  cfg.train.data_dir = ""  # a built data set (`memtrain data build`); '' = build into <workdir>/data
  cfg.train.log_every = 1
  cfg.train.dump_rollouts_every = 10  # 0 = never
  cfg.train.dump_rollouts_count = 2  # rollouts per dump
  # A non-finite loss or gradient skips its update (params and optimizer state unchanged, counted
  # in train/skipped_updates); this many skipped updates in a row stop the run with an error,
  # leaving the last checkpoint as it was.
  cfg.train.max_consecutive_skipped = 3

  cfg.checkpoint = ConfigDict()
  cfg.checkpoint.every = 50  # steps; 0 = only at the end and on SIGTERM
  cfg.checkpoint.keep = 3
  cfg.checkpoint.async_save = True

  cfg.export = ConfigDict()
  cfg.export.hf_dir = ""  # '' = <workdir>/hf at the end of training
  return cfg


# ----------------------------------------------------------------------------------------------
# Loading and overrides.


def parse_command_line(prog: str, description: str, argv, validate_fn, *,
                       config_help: str, workdir_help: str, example_override: str):
  """The shared front of `memtrain train` / `memtrain eval`: --config, --workdir, overrides.

  Sets up logging (libraries from WARNING, the 'memtrain' logger from INFO), loads and validates
  the config. Returns (config, workdir), or None after printing "<prog>: bad config: ..." to
  stderr when the config is bad (the caller exits 2). Unknown arguments exit 2 through argparse,
  with an example override.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help=config_help)
  parser.add_argument("--workdir", required=True, help=workdir_help)
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith(("--config.", "config."))]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config overrides look like {example_override}")
  # Libraries (orbax, bm25s, jax) log a lot at INFO; show theirs from WARNING and ours from INFO.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  logging.getLogger("memtrain").setLevel(logging.INFO)
  try:
    cfg = load_config(args.config, overrides)
    validate_fn(cfg)
  except (ValueError, FileNotFoundError, TypeError) as e:
    print(f"{prog}: bad config: {e}", file=sys.stderr)
    return None
  return cfg, args.workdir


def _import_get_config(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  name = "memtrain_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config() function")
  return module.get_config


def config_from_file(path: str, arg: str | None = None) -> ConfigDict:
  """`get_config()` (or `get_config(arg)`) of a config file, unlocked: for configs built on others.

  Example, in configs/paper/ablation_decoupled.py:
    base = os.path.join(os.path.dirname(__file__), "memtrain_qwen3_4b.py")
    cfg = config_lib.config_from_file(base)
  """
  get_config = _import_get_config(path)
  cfg = get_config(arg) if arg is not None else get_config()
  if not isinstance(cfg, ConfigDict):
    raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected a ConfigDict")
  return cfg


def load_config(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
  """Imports `get_config()` from a config file, locks the result and applies overrides.

  Args:
    path: a Python file with `get_config()`, optionally followed by ':arg' (passed as
      `get_config(arg)`, big_vision style).
    overrides: items like '--config.rl.kl_coef=0', 'config.rl.kl_coef=0' or 'rl.kl_coef=0'.

  Returns:
    The locked ConfigDict (new fields cannot be added; existing ones can still be set).
  """
  arg = None
  if ".py:" in path:  # FILE.py:arg (the arg may itself be a path)
    path, arg = path.split(".py:", 1)
    path += ".py"
  cfg = config_from_file(path, arg)
  cfg.lock()
  apply_overrides(cfg, overrides)
  return cfg


def _parse_value(text: str, current: Any, key: str) -> Any:
  """Parses `text` into the type of the field's current value."""
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(f"config field {key!r} is a bool; got {text!r} (use true/false)")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ValueError(f"config field {key!r} holds {type(current).__name__}; cannot parse {text!r}")
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(value)
  if isinstance(current, int) and isinstance(value, float) and value.is_integer():
    return int(value)
  if current is not None and not isinstance(value, type(current)):
    raise ValueError(f"config field {key!r} holds {type(current).__name__} ({current!r}); "
                     f"{text!r} parses as {type(value).__name__}")
  return value


def _unknown_key(key: str, node: ConfigDict, prefix: str) -> ValueError:
  options = sorted(node.keys())
  close = difflib.get_close_matches(key.split(".")[-1], options, n=1)
  hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
  return ValueError(f"unknown config field {prefix + key.split('.')[-1]!r}{hint} "
                    f"(fields here: {', '.join(options)})")


def set_field(cfg: ConfigDict, dotted_key: str, text: str) -> None:
  """Sets `cfg.<dotted_key>` from a command-line string, checking the key and the type."""
  parts = dotted_key.split(".")
  node, prefix = cfg, ""
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], ConfigDict):
      raise _unknown_key(part, node, prefix)
    node, prefix = node[part], prefix + part + "."
  leaf = parts[-1]
  if leaf not in node:
    raise _unknown_key(leaf, node, prefix)
  if isinstance(node[leaf], ConfigDict):
    raise ValueError(f"config field {dotted_key!r} is a section; set one of its fields: "
                     f"{', '.join(sorted(node[leaf].keys()))}")
  node[leaf] = _parse_value(text, node[leaf], dotted_key)


def apply_overrides(cfg: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
  """Applies 'key=value' overrides (with or without a '--config.' / 'config.' prefix) in place."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r} is not of the form --config.section.field=value")
    key, text = item.split("=", 1)
    key = key.lstrip("-")
    if key.startswith("config."):
      key = key[len("config."):]
    set_field(cfg, key, text)
  return cfg


# ----------------------------------------------------------------------------------------------
# Views: the typed settings objects of the modules, built from a config.


TASKS = ("memtrain", "long_qa", "search_qa")
# Tags, turn hints and the corrective text around a search reply and its passages (tokens).
SEARCH_PROMPT_SLACK = 96


def longest_prompt_tokens(cfg: ConfigDict) -> int:
  """An upper bound on the prompt tokens of any row of the configured task.

  Memory agent: instruction + problem (agent.prompt_max_tokens) + memory + chunk. Search agent:
  instruction + questions (agent.prompt_max_tokens) + the previous reply + its passages.
  """
  agent = cfg.agent
  if cfg.task.name == "search_qa":
    search = cfg.task.search_qa
    return (agent.prompt_max_tokens + search.max_response_tokens + search.max_obs_tokens +
            SEARCH_PROMPT_SLACK)
  return agent.prompt_max_tokens + agent.memory_max_tokens + cfg.data.chunking.chunk_size


def loss_config(cfg: ConfigDict):
  """rl.loss.LossConfig from the `rl` section."""
  from memtrain_jax.rl.loss import LossConfig
  norm_length = cfg.rl.norm_length or cfg.agent.answer_max_tokens
  return LossConfig(aggregation=cfg.rl.aggregation, clip_eps_low=cfg.rl.clip_eps_low,
                    clip_eps_high=cfg.rl.clip_eps_high, kl_coef=cfg.rl.kl_coef,
                    kl_estimator=cfg.rl.kl_estimator, max_log_ratio=cfg.rl.max_log_ratio,
                    norm_length=norm_length)


def advantage_config(cfg: ConfigDict):
  """rl.advantages.AdvantageConfig; lambda comes from objectives.recall.lam."""
  from memtrain_jax.rl.advantages import AdvantageConfig
  adv = cfg.rl.advantage
  return AdvantageConfig(lam=cfg.objectives.recall.lam, scale_by_std=adv.scale_by_std,
                         drop_degenerate_e2e=adv.drop_degenerate_e2e,
                         drop_degenerate_recall=adv.drop_degenerate_recall)


def packing_config(cfg: ConfigDict, pad_id: int = 0):
  """rl.packing.PackingConfig from rl.packing."""
  from memtrain_jax.rl.packing import PackingConfig
  p = cfg.rl.packing
  return PackingConfig(seq_len=p.seq_len, micro_batch_size=p.micro_batch_size,
                       num_micro_batches_multiple=p.num_micro_batches_multiple, pad_id=pad_id,
                       share_prompts=p.share_prompts)


def updates_per_step(cfg: ConfigDict) -> int:
  """Optimizer updates per training step (for `rl.train_step.make_optimizer`)."""
  return cfg.rl.ppo_epochs * cfg.rl.num_mini_batches


def optim_section(cfg: ConfigDict) -> ConfigDict:
  """The `optim` section with decay_steps resolved (0 -> train.num_steps)."""
  optim = ConfigDict(cfg.optim.to_dict())
  if not optim.decay_steps:
    optim.decay_steps = cfg.train.num_steps
  return optim


CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_cache_dtype(cache_dtype: str, field: str = "sampling.cache_dtype") -> None:
  """Refuses a KV cache dtype the sampler does not know (`sampling.sampler.resolve_cache_dtype`)."""
  if cache_dtype not in CACHE_DTYPES:
    raise ValueError(f"{field}={cache_dtype!r}; use one of {', '.join(map(repr, CACHE_DTYPES))}")


KERNEL_SETTINGS = ("auto", "kernel", "xla")


def check_kernel_setting(value: str, field: str) -> None:
  """Refuses a CPU-kernel setting the sampler does not know (`sampling.decode_attention`,
  `sampling.decode_matmul`, `sampling.prefill_matmul`: `resolve_decode_attention`,
  `resolve_matmul`)."""
  if value not in KERNEL_SETTINGS:
    raise ValueError(f"{field}={value!r}; use one of {', '.join(map(repr, KERNEL_SETTINGS))}")


def check_decode_step_tokens(value: int, field: str = "sampling.decode_step_tokens") -> None:
  """Refuses a negative decode-step cost (`sampling.batching.plan_microbatches`)."""
  if value < 0:
    raise ValueError(f"{field}={value}: it is what one decode step costs in prompt tokens of "
                     "prefill; use a value >= 0")


_KERNEL_FIELDS = ("decode_attention", "decode_matmul", "prefill_matmul")


def check_sampler_settings(sampling: ConfigDict) -> None:
  """Refuses `sampling` fields (training's or evaluation's) that `sampler_settings` passes on and
  the sampler would reject."""
  check_cache_dtype(sampling.cache_dtype)
  for field in _KERNEL_FIELDS:
    check_kernel_setting(sampling[field], f"sampling.{field}")
  check_decode_step_tokens(sampling.decode_step_tokens)


def sampler_settings(sampling: ConfigDict) -> dict:
  """The `SamplerConfig` arguments that `sampling` (training's or evaluation's) gives as they are:
  the KV cache dtype, the CPU-kernel settings and the decode-step cost."""
  fields = ("cache_dtype",) + _KERNEL_FIELDS + ("decode_step_tokens",)
  return {field: sampling[field] for field in fields}


def validate(cfg: ConfigDict) -> None:
  """Raises ValueError for combinations that cannot run."""
  loss_config(cfg)  # checks aggregation / estimator names
  if cfg.optim.schedule not in ("constant", "cosine"):
    raise ValueError(f"optim.schedule={cfg.optim.schedule!r}; use 'constant' or 'cosine'")
  if not (cfg.objectives.end_to_end.enabled or cfg.objectives.recall.enabled):
    raise ValueError("both objectives are disabled; enable objectives.end_to_end or .recall")
  if cfg.objectives.recall.enabled and not cfg.objectives.end_to_end.enabled:
    raise ValueError("objectives.recall probes end-to-end trajectories; enable end_to_end too")
  if cfg.task.name not in TASKS:
    raise ValueError(f"task.name={cfg.task.name!r}; choose one of {', '.join(TASKS)}")
  if cfg.task.name != "memtrain" and cfg.objectives.recall.enabled:
    raise ValueError(f"task.name={cfg.task.name!r} is task RL with the final-answer reward only; "
                     "set objectives.recall.enabled=False (recall probes need MemTrain documents)")
  if cfg.task.name == "long_qa" and cfg.objectives.end_to_end.name == "masked_reconstruction":
    raise ValueError("task.name='long_qa' asks each document's own question; set "
                     "objectives.end_to_end.name='qa_final_answer'")
  if cfg.task.name == "long_qa" and (not cfg.task.long_qa.target_tokens or
                                     min(cfg.task.long_qa.target_tokens) <= 0):
    raise ValueError("task.long_qa.target_tokens must be a non-empty tuple of positive lengths")
  check_sampler_settings(cfg.sampling)
  if cfg.objectives.end_to_end.num_rollouts < 1 or cfg.objectives.recall.num_samples < 1:
    raise ValueError("objectives.*.num_rollouts / num_samples must be >= 1")
  if cfg.train.max_consecutive_skipped < 1:
    raise ValueError(f"train.max_consecutive_skipped={cfg.train.max_consecutive_skipped}: use >= 1 "
                     "(skipped non-finite updates in a row before the run stops)")
  if cfg.rl.ppo_epochs < 1 or cfg.rl.num_mini_batches < 1:
    raise ValueError("rl.ppo_epochs and rl.num_mini_batches must be >= 1")
  agent = cfg.agent
  if cfg.task.name == "search_qa":
    search = cfg.task.search_qa
    if search.max_turns < 1 or search.questions_per_task < 1:
      raise ValueError("task.search_qa.max_turns and questions_per_task must be >= 1")
    longest = longest_prompt_tokens(cfg) + search.max_response_tokens
    what = (f"instructions {agent.prompt_max_tokens} + previous reply and passages "
            f"{search.max_response_tokens + search.max_obs_tokens + SEARCH_PROMPT_SLACK} + reply "
            f"{search.max_response_tokens} - 1")
  else:
    longest = longest_prompt_tokens(cfg) + max(
        agent.memory_max_tokens, agent.answer_max_tokens, agent.recall_max_tokens)
    what = (f"prompt {agent.prompt_max_tokens} + chunk {cfg.data.chunking.chunk_size} + memory "
            f"{agent.memory_max_tokens} + completion - 1")
  if cfg.rl.packing.seq_len < longest - 1:
    raise ValueError(f"rl.packing.seq_len={cfg.rl.packing.seq_len} is shorter than the longest "
                     f"row ({longest - 1} slots = {what})")
  from memtrain_jax.data.config import validate_data_config
  validate_data_config(cfg.data)


# Fields a resumed run may change: how long it runs, how it logs and checkpoints, and the mesh (a
# preempted job may come back on another slice). Any other change would splice two different runs
# into one checkpoint history.
RESUME_MAY_CHANGE = ("train.num_steps", "train.log_every", "train.dump_rollouts_every",
                     "train.dump_rollouts_count", "train.max_consecutive_skipped", "checkpoint.",
                     "mesh.")


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def resume_conflicts(saved: dict, cfg: ConfigDict) -> list[str]:
  """Fields (dotted) whose value in `cfg` differs from the `saved` config of the run it resumes,
  other than those in RESUME_MAY_CHANGE and those the saved config predates, each as
  'field: saved -> new'."""
  old, new = _flatten(saved), _flatten(json.loads(cfg.to_json()))
  # Only the saved fields: one the saved config lacks was added by a newer package, at its default.
  return [f"{name}: {old[name]!r} -> {new.get(name, '<absent>')!r}" for name in sorted(old)
          if not name.startswith(RESUME_MAY_CHANGE) and old[name] != new.get(name, "<absent>")]
