"""The evaluation config schema (`memtrain eval`), its "name=value" fields and its validation.

Eval config files under `configs/eval/` start from `eval_config()` and change fields; they are
loaded with `config_lib.load_config(path, overrides)` like training configs (locked, with
`--config.x.y=v` overrides). `validate_eval_config` checks everything that can be checked before a
model is loaded, with errors that name the field and the fix.

Defaults are CPU-sized where the paper has no say; paper values are noted next to each field
(Table 1: MemAgent's RULER-HotpotQA protocol; Table 2: MEM1's search protocol).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import ml_collections

from memtrain_jax.config_lib import check_sampler_settings
from memtrain_jax.tasks import longqa, ruler_hotpotqa, searchqa

ConfigDict = ml_collections.ConfigDict

MEMORY_AGENT = "memory_agent"
FULL_CONTEXT = "full_context"
MODES = (MEMORY_AGENT, FULL_CONTEXT)
DISTRACTOR_POOLS = ("selected", "source")
NUM_DOCS_SLOT = "{num_docs}"
# Names end up in file names and table rows.
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_ROW_KEY = re.compile(r"^[A-Za-z0-9_.+-]+(:[a-z_]+)?$")  # "name" or "name:mode"
_DTYPES = ("float32", "bfloat16", "float16")


def eval_config() -> ConfigDict:
  """Every section with its default (unlocked; eval config files change it)."""
  cfg = ConfigDict()
  # "name=path" per model; a path is an HF directory (e.g. a `memtrain train` export <workdir>/hf),
  # a .gguf file or 'bundled:smollm2-135m-instruct'. Names label rows and key the saved cells.
  cfg.models = ("base=bundled:smollm2-135m-instruct",)

  cfg.model = ConfigDict()
  cfg.model.param_dtype = "float32"  # paper scale: bfloat16
  cfg.model.compute_dtype = "float32"

  cfg.mesh = ConfigDict()
  cfg.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); the batch is split over data x fsdp

  cfg.sampling = ConfigDict()
  cfg.sampling.temperature = 0.0  # 0 = greedy; MemAgent's eval: 0.7
  cfg.sampling.top_p = 1.0  # MemAgent's eval: 0.95
  cfg.sampling.top_k = 0  # 0 = off
  cfg.sampling.seed = 0
  # Prompts and batches are padded up to these; buckets above the longest possible prompt are
  # dropped and the smallest one holding it is kept (or that length itself is added).
  cfg.sampling.prompt_buckets = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
  cfg.sampling.batch_buckets = (1, 2, 4, 8, 16, 32, 64)
  # KV cache dtype: "auto" = the compute dtype, but f32 for 16-bit compute on CPU when XLA's
  # attention is used (XLA:CPU writes a bf16 cache out of place; the CPU decode-attention kernel
  # writes it in place); or "float32" / "bfloat16".
  cfg.sampling.cache_dtype = "auto"
  cfg.sampling.decode_step_tokens = 64  # as in training (config_lib.base_config)
  cfg.sampling.decode_attention = "auto"  # as in training: the CPU kernel when it builds
  cfg.sampling.decode_matmul = "auto"  # as in training: the CPU kernel for float32 compute
  cfg.sampling.prefill_matmul = "auto"  # as in training: the same kernel for prefill

  # The memory agent's budgets (MemAgent's eval: chunk 5000, memory 1024, answer 1024).
  cfg.agent = ConfigDict()
  cfg.agent.prompt_max_tokens = 1024  # instruction + question(s): sizes the prompt buckets
  cfg.agent.chunk_size = 5000  # context tokens per memory-update step
  cfg.agent.memory_max_tokens = 1024
  cfg.agent.answer_max_tokens = 1024  # also the full-context baseline's answer budget
  cfg.agent.initial_memory = "No previous memory"
  # Prefilled start of every answer, e.g. "\\boxed{" for SmolLM2, which rarely boxes otherwise;
  # '' = none (the paper).
  cfg.agent.answer_prefix = ""

  # Table 1: RULER-HotpotQA (MemAgent's long-context HotpotQA).
  cfg.long_qa = ConfigDict()
  cfg.long_qa.enabled = True
  # longqa.BUNDLED_HOTPOTQA, a HotpotQA json (samples are built here), or MemAgent's ready-made
  # eval files as a path with a '{num_docs}' slot (json or parquet, one file per document count).
  cfg.long_qa.source = longqa.BUNDLED_HOTPOTQA
  # The models of Table 1: () = every model; names not in `models` are ignored, so one config can
  # name the whole chain while a run evaluates part of it.
  cfg.long_qa.models = ()
  cfg.long_qa.question_start = 0
  cfg.long_qa.question_count = 16  # 0 = all from question_start (MemAgent: 128)
  # Exactly one of: context lengths in tokens of the first model's tokenizer (each question gets
  # the document count closest to it), or document counts per context (MemAgent: 50 .. 6400).
  cfg.long_qa.lengths = (512, 1024, 2048)
  cfg.long_qa.num_docs = ()
  cfg.long_qa.length_labels = ()  # column names, one per length; () = derived ("1K", "50 docs")
  cfg.long_qa.length_tolerance = 0.25  # lengths: allowed relative miss (one document is coarse)
  # Where distractor paragraphs come from: 'selected' = the selected questions' own paragraphs
  # (disjoint from training questions), 'source' = every question of the source (MemAgent).
  cfg.long_qa.distractor_pool = "selected"
  cfg.long_qa.seed = ruler_hotpotqa.MEMAGENT_SEED
  cfg.long_qa.modes = MODES
  # The full-context baseline runs for these of `models` (the paper: the base models); names of
  # models not evaluated in a run are ignored.
  cfg.long_qa.full_context_models = ("base",)
  cfg.long_qa.full_context_max_tokens = 120000  # centre truncation of the context (MemAgent)
  # Prompts per generate call (0 = all); a 120K-token cache row of a 4B model is ~18 GB.
  cfg.long_qa.full_context_batch_size = 0
  cfg.long_qa.full_context_template = ""  # '' = evaluation.longqa.FULL_CONTEXT_TEMPLATE
  cfg.long_qa.first_answer_only = True  # MemAgent scores against answers[0] only

  # Table 2: multi-objective search QA (MEM1).
  cfg.search_qa = ConfigDict()
  cfg.search_qa.enabled = True
  # "name=source" per data set: a JSONL/JSON/parquet file of {question, golden_answers} rows
  # (MEM1's / FlashRAG's test files), a HotpotQA json, or longqa.BUNDLED_HOTPOTQA.
  cfg.search_qa.datasets = ("hotpotqa=" + longqa.BUNDLED_HOTPOTQA,)
  # The models of Table 2, as long_qa.models (the paper leaves out MemTrain-only models).
  cfg.search_qa.models = ()
  cfg.search_qa.question_start = 0
  cfg.search_qa.question_count = 16  # 0 = all
  cfg.search_qa.questions_per_task = 2  # MEM1: 2 objectives per prompt
  cfg.search_qa.max_turns = 6  # paper
  cfg.search_qa.max_response_tokens = 1000  # MEM1
  cfg.search_qa.max_obs_tokens = 1000  # MEM1
  cfg.search_qa.topk = 3  # MEM1
  cfg.search_qa.retrieval_url = ""  # e.g. http://127.0.0.1:8000 (e5 + FAISS wiki-18 in MEM1)
  cfg.search_qa.corpus = searchqa.BUNDLED_CORPUS  # in-process BM25 when retrieval_url is ''

  cfg.report = ConfigDict()
  cfg.report.title = "MemTrain evaluation"
  # "key=label" rows; key = a model name (every row of it) or "name:mode" with mode
  # memory_agent, full_context or search. () = the model names.
  cfg.report.row_names = ()
  cfg.report.plot = True  # long_qa_accuracy_vs_length.png (needs matplotlib)
  return cfg


# ----------------------------------------------------------------------------------------------
# "name=value" fields.


def parse_named(items: Sequence[str], field: str,
                pattern: re.Pattern = _NAME) -> list[tuple[str, str]]:
  """[(name, value)] of "name=value" strings; errors name the field and the expected form."""
  out, seen = [], set()
  for i, item in enumerate(items):
    name, sep, value = str(item).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
      raise ValueError(f"{field}[{i}] = {item!r} is not of the form 'name=value' "
                       f"(e.g. 'base=bundled:smollm2-135m-instruct')")
    if not pattern.match(name):
      raise ValueError(f"{field}[{i}]: name {name!r} may only hold letters, digits and _.+-")
    if name in seen:
      raise ValueError(f"{field}: name {name!r} appears twice; names must be unique")
    seen.add(name)
    out.append((name, value))
  return out


def model_specs(cfg: ConfigDict) -> list[tuple[str, str]]:
  return parse_named(cfg.models, "models")


def dataset_specs(cfg: ConfigDict) -> list[tuple[str, str]]:
  return parse_named(cfg.search_qa.datasets, "search_qa.datasets")


def row_name_specs(cfg: ConfigDict) -> list[tuple[str, str]]:
  return parse_named(cfg.report.row_names, "report.row_names", _ROW_KEY)


def task_models(cfg: ConfigDict, task: str) -> list[str]:
  """The model names that `task` ('long_qa' or 'search_qa') evaluates, in `models` order."""
  names = [name for name, _ in model_specs(cfg)]
  chosen = cfg[task].models
  return [n for n in names if not chosen or n in chosen]


def length_targets(cfg: ConfigDict) -> list[tuple[str, int]]:
  """(kind, value) per long-QA column: kind 'tokens' or 'num_docs'."""
  lq = cfg.long_qa
  if lq.lengths:
    return [("tokens", int(t)) for t in lq.lengths]
  return [("num_docs", int(n)) for n in lq.num_docs]


def default_length_label(kind: str, value: int) -> str:
  if kind == "num_docs":
    return f"{value} docs"
  for unit in (1024, 1000):  # 2048 -> "2K", 7000 -> "7K"
    if value >= unit and value % unit == 0:
      return f"{value // unit}K"
  return str(value)


def length_labels(cfg: ConfigDict) -> list[str]:
  targets = length_targets(cfg)
  if cfg.long_qa.length_labels:
    return [str(label) for label in cfg.long_qa.length_labels]
  return [default_length_label(kind, value) for kind, value in targets]


def uses_memagent_files(cfg: ConfigDict) -> bool:
  return NUM_DOCS_SLOT in cfg.long_qa.source


# ----------------------------------------------------------------------------------------------
# Validation.


def _check_model_path(i: int, name: str, path: str) -> None:
  from memtrain_jax import models  # deferred: importing the models pulls in jax
  try:
    models.checkpoint_kind(path)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"models[{i}] ({name}={path}): {e}. Give an existing HF directory, a .gguf "
                     f"file or {models.BUNDLED_MODEL!r}, e.g. --config.models='(\"{name}=PATH\",)'"
                     ) from None


def _check_file(field: str, path: str, allowed: Sequence[str] = (), check: bool = True) -> None:
  if not check or path in allowed:
    return
  if not os.path.isfile(os.path.expanduser(path)):
    extra = f" or one of {list(allowed)}" if allowed else ""
    raise ValueError(f"{field}: file {path!r} does not exist; give an existing file{extra}")


def _positive(field: str, values: Sequence, allow_empty: bool = False) -> None:
  if not values and not allow_empty:
    raise ValueError(f"{field} is empty")
  for v in values:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"{field} must hold integers > 0; got {v!r} in {tuple(values)}")


def _validate_long_qa(cfg: ConfigDict, check_paths: bool) -> None:
  lq = cfg.long_qa
  if bool(lq.lengths) == bool(lq.num_docs):
    raise ValueError("long_qa: set exactly one of long_qa.lengths (context tokens, e.g. "
                     "(512, 1024)) and long_qa.num_docs (documents per context, e.g. (50, 100)); "
                     "set the other to ()")
  _positive("long_qa.lengths" if lq.lengths else "long_qa.num_docs", lq.lengths or lq.num_docs)
  targets = length_targets(cfg)
  if lq.length_labels and len(lq.length_labels) != len(targets):
    raise ValueError(f"long_qa.length_labels has {len(lq.length_labels)} labels for "
                     f"{len(targets)} lengths; give one per length or ()")
  if len(set(length_labels(cfg))) != len(targets):
    raise ValueError(f"long_qa: column labels {length_labels(cfg)} repeat; lengths must differ")
  if not 0 < lq.length_tolerance <= 1:
    raise ValueError(f"long_qa.length_tolerance={lq.length_tolerance} must be in (0, 1]")
  if lq.question_start < 0 or lq.question_count < 0:
    raise ValueError("long_qa.question_start and question_count must be >= 0")
  if lq.distractor_pool not in DISTRACTOR_POOLS:
    raise ValueError(f"long_qa.distractor_pool={lq.distractor_pool!r}; use one of "
                     f"{DISTRACTOR_POOLS}")
  if not lq.modes or any(m not in MODES for m in lq.modes):
    raise ValueError(f"long_qa.modes={tuple(lq.modes)}; use a non-empty subset of {MODES}")
  if lq.full_context_batch_size < 0:
    raise ValueError(f"long_qa.full_context_batch_size={lq.full_context_batch_size} must be >= 0 "
                     f"(0 = every question in one call)")
  if lq.full_context_max_tokens <= 0:
    raise ValueError(f"long_qa.full_context_max_tokens={lq.full_context_max_tokens} must be > 0")
  if uses_memagent_files(cfg):
    if not lq.num_docs:
      raise ValueError(f"long_qa.source {lq.source!r} names one MemAgent file per document count "
                       f"('{NUM_DOCS_SLOT}'); set long_qa.num_docs, not long_qa.lengths")
    for n in lq.num_docs:
      _check_file("long_qa.source", lq.source.replace(NUM_DOCS_SLOT, str(n)), (), check_paths)
  else:
    _check_file("long_qa.source", lq.source, (longqa.BUNDLED_HOTPOTQA,), check_paths)


def _validate_search_qa(cfg: ConfigDict, check_paths: bool) -> None:
  sq = cfg.search_qa
  datasets = dataset_specs(cfg)
  if not datasets:
    raise ValueError("search_qa.datasets is empty; give 'name=source' entries or set "
                     "search_qa.enabled=False")
  for i, (name, source) in enumerate(datasets):
    _check_file(f"search_qa.datasets[{i}] ({name})", source, (longqa.BUNDLED_HOTPOTQA,),
                check_paths)
  if sq.questions_per_task < 1:
    raise ValueError(f"search_qa.questions_per_task={sq.questions_per_task} must be >= 1")
  if sq.question_count and sq.question_count < sq.questions_per_task:
    raise ValueError(f"search_qa.question_count={sq.question_count} makes no task of "
                     f"{sq.questions_per_task} questions; raise it or use 0 (all)")
  if sq.question_start < 0 or sq.question_count < 0:
    raise ValueError("search_qa.question_start and question_count must be >= 0")
  for field in ("max_turns", "max_response_tokens", "max_obs_tokens", "topk"):
    if getattr(sq, field) < 1:
      raise ValueError(f"search_qa.{field}={getattr(sq, field)} must be >= 1")
  if not sq.retrieval_url:
    _check_file("search_qa.corpus", sq.corpus, (searchqa.BUNDLED_CORPUS,), check_paths)


def _validate_row_names(cfg: ConfigDict) -> None:
  for i, (key, _) in enumerate(row_name_specs(cfg)):
    # Names of models not evaluated are allowed: a config may label more models than one run has.
    mode = key.partition(":")[2]
    if mode and mode not in MODES + ("search",):
      raise ValueError(f"report.row_names[{i}] key {key!r}: mode {mode!r} is not one of "
                       f"{MODES + ('search',)}")


def validate_eval_config(cfg: ConfigDict, check_paths: bool = True) -> None:
  """Raises ValueError naming the field and the fix for a config that cannot run.

  Args:
    cfg: an `eval_config()`-shaped config.
    check_paths: also check that model paths and data files exist.
  """
  specs = model_specs(cfg)
  if not specs:
    raise ValueError("models is empty; give at least one 'name=path', e.g. "
                     "--config.models='(\"base=bundled:smollm2-135m-instruct\",)'")
  names = [name for name, _ in specs]
  if check_paths:
    for i, (name, path) in enumerate(specs):
      _check_model_path(i, name, path)
  for field in ("param_dtype", "compute_dtype"):
    if cfg.model[field] not in _DTYPES:
      raise ValueError(f"model.{field}={cfg.model[field]!r}; use one of {_DTYPES}")
  if cfg.sampling.temperature < 0 or not 0 < cfg.sampling.top_p <= 1 or cfg.sampling.top_k < 0:
    raise ValueError("sampling: temperature must be >= 0 (0 = greedy), top_p in (0, 1], "
                     "top_k >= 0")
  for field in ("prompt_max_tokens", "chunk_size", "memory_max_tokens", "answer_max_tokens"):
    if cfg.agent[field] < 1:
      raise ValueError(f"agent.{field}={cfg.agent[field]} must be >= 1")
  check_sampler_settings(cfg.sampling)
  _positive("sampling.prompt_buckets", cfg.sampling.prompt_buckets)
  _positive("sampling.batch_buckets", cfg.sampling.batch_buckets)
  if not (cfg.long_qa.enabled or cfg.search_qa.enabled):
    raise ValueError("both tasks are disabled; set long_qa.enabled or search_qa.enabled to True")
  # A task whose filter selects none of this run's models is skipped; nothing at all is an error.
  if not any(cfg[t].enabled and task_models(cfg, t) for t in ("long_qa", "search_qa")):
    raise ValueError(f"long_qa.models and search_qa.models select none of the models {names} "
                     f"for an enabled task; use () for all models")
  if cfg.long_qa.enabled:
    _validate_long_qa(cfg, check_paths)
  if cfg.search_qa.enabled:
    _validate_search_qa(cfg, check_paths)
  _validate_row_names(cfg)
