"""`memtrain eval`'s loop: plan the cells, run the missing ones model by model, write the report.

Cells (see `cells`) are planned from the config: for long QA every model x mode x length (the
full-context mode only for `long_qa.full_context_models`), for search QA every model of
`search_qa.models` x data set. Cells already in the workdir with the same settings are skipped, and
a model whose cells are all done is never loaded, so a re-run after an interruption costs at most
the one cell that was running.

Multi-process jobs (a TPU pod slice, several GPU nodes; `sharding.maybe_initialize_distributed`)
run `run_eval` on every process. Cells are replicated, not split: every process plans the same
cells and runs every one of them over the global mesh, with the same prompts in the same order
(the sampler's outputs reach every process through `sharding.to_host`, a collective). Process 0
alone reads the finished cells and writes eval_config.json, cells/, predictions/ and the report;
what it read, and at the end the cell records it holds, are broadcast to the other processes, so
every process runs the same cells and returns the same results dict whether or not it can see the
workdir (a host-local directory on process 0's machine, or a `gs://` URL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import jax
from etils import epath

from memtrain_jax import models, paths
from memtrain_jax import sharding as shd
from memtrain_jax.agent import search_rollout
from memtrain_jax.config_lib import sampler_settings
from memtrain_jax.evaluation import cells as cells_lib
from memtrain_jax.evaluation import config as config_lib
from memtrain_jax.evaluation import longqa, report, searchqa
from memtrain_jax.evaluation.cells import CellSpec, CellStore, fingerprint
from memtrain_jax.metrics import format_duration
from memtrain_jax.sampling.sampler import Sampler, SamplerConfig

log = logging.getLogger("memtrain")

# Search prompts add a turns-left hint and tags around the reply and the passages.
_SEARCH_PROMPT_MARGIN = 128


# ----------------------------------------------------------------------------------------------
# Planning.


def _without(section: Mapping, *keys: str) -> dict:
  return {k: v for k, v in section.items() if k not in keys}


def plan_cells(cfg) -> list[CellSpec]:
  """Every cell the config asks for, in run order (model by model), with what decides it."""
  specs = config_lib.model_specs(cfg)
  first_path = specs[0][1]
  sampling = _without(cfg.sampling.to_dict(), "prompt_buckets", "batch_buckets")
  plan = []
  for name, path in specs:
    common = {"model_path": path, "model": cfg.model.to_dict(), "sampling": sampling}
    if cfg.long_qa.enabled and name in config_lib.task_models(cfg, "long_qa"):
      lq = cfg.long_qa.to_dict()
      data = _without(lq, "enabled", "models", "lengths", "num_docs", "length_labels", "modes",
                      "full_context_models", "full_context_max_tokens", "full_context_template",
                      "full_context_batch_size")
      modes = [m for m in config_lib.MODES if m in cfg.long_qa.modes and
               (m == config_lib.MEMORY_AGENT or name in cfg.long_qa.full_context_models)]
      for mode in modes:
        if mode == config_lib.MEMORY_AGENT:
          method = _without(cfg.agent.to_dict(), "prompt_max_tokens")
        else:
          method = {"answer_max_tokens": cfg.agent.answer_max_tokens,
                    "answer_prefix": cfg.agent.answer_prefix,
                    "max_tokens": lq["full_context_max_tokens"],
                    "batch_size": lq["full_context_batch_size"],
                    "template": lq["full_context_template"]}
        for (kind, value), label in zip(config_lib.length_targets(cfg),
                                        config_lib.length_labels(cfg)):
          # Token targets are measured with the first model's tokenizer.
          target = {"kind": kind, "value": value,
                    "tokenizer": first_path if kind == "tokens" else None}
          plan.append(CellSpec(
              key=f"long_qa__{name}__{mode}__{kind}{value}", task="long_qa", model=name,
              column=label, mode=mode,
              settings={**common, "data": data, "method": method, "target": target}))
    if cfg.search_qa.enabled and name in config_lib.task_models(cfg, "search_qa"):
      env = _without(cfg.search_qa.to_dict(), "enabled", "datasets", "models")
      for dataset, source in config_lib.dataset_specs(cfg):
        plan.append(CellSpec(
            key=f"search_qa__{name}__{dataset}", task="search_qa", model=name, column=dataset,
            mode="search", settings={**common, "env": env, "source": source}))
  return plan


# ----------------------------------------------------------------------------------------------
# Samplers.


def prompt_buckets(buckets: Sequence[int], longest: int) -> tuple[int, ...]:
  """The buckets below `longest` plus the smallest one holding it (or `longest` itself)."""
  kept = tuple(sorted(b for b in buckets if b < longest))
  return kept + (next((b for b in sorted(buckets) if b >= longest), longest),)


def long_qa_sampler_config(cfg) -> SamplerConfig:
  """One config for every model (so they can share one sampler), sized for the full-context
  prompts when any model runs them."""
  agent = cfg.agent
  longest = agent.prompt_max_tokens + agent.memory_max_tokens + agent.chunk_size
  names = config_lib.task_models(cfg, "long_qa")
  if (config_lib.FULL_CONTEXT in cfg.long_qa.modes and
      any(name in names for name in cfg.long_qa.full_context_models)):
    longest = max(longest, agent.prompt_max_tokens + cfg.long_qa.full_context_max_tokens)
  return SamplerConfig(prompt_buckets=prompt_buckets(cfg.sampling.prompt_buckets, longest),
                       batch_buckets=tuple(cfg.sampling.batch_buckets),
                       max_new_tokens=max(agent.memory_max_tokens, agent.answer_max_tokens),
                       **sampler_settings(cfg.sampling))


def search_sampler_config(cfg) -> SamplerConfig:
  sq = cfg.search_qa
  # A turn's prompt: instruction and questions, the previous reply and what it retrieved.
  longest = (cfg.agent.prompt_max_tokens + sq.max_response_tokens + sq.max_obs_tokens +
             _SEARCH_PROMPT_MARGIN)
  return SamplerConfig(prompt_buckets=prompt_buckets(cfg.sampling.prompt_buckets, longest),
                       batch_buckets=tuple(cfg.sampling.batch_buckets),
                       max_new_tokens=sq.max_response_tokens,
                       stop_strings=search_rollout.STOP_STRINGS,
                       **sampler_settings(cfg.sampling))


# ----------------------------------------------------------------------------------------------
# Running.


class _Inputs:
  """Data shared by every model, built on first use: samples, search tasks, the retriever."""

  def __init__(self, cfg):
    self.cfg = cfg
    self._samples = None
    self._tasks: dict[str, list] = {}
    self._retriever = None

  def samples(self, kind: str, value: int):
    if self._samples is None:
      first_path = config_lib.model_specs(self.cfg)[0][1]
      self._samples = longqa.SampleSource(self.cfg.long_qa, models.load_tokenizer(first_path))
    return self._samples.samples(kind, value), self._samples.question_index

  def tasks(self, source: str):
    if source not in self._tasks:
      self._tasks[source] = searchqa.load_tasks(self.cfg.search_qa, source)
    return self._tasks[source]

  def retriever(self):
    if self._retriever is None:
      self._retriever = searchqa.make_retriever(self.cfg.search_qa)
    return self._retriever


def _tokenizer_key(tokenizer) -> str:
  """A hash of everything a sampler uses the tokenizer for: vocabulary, specials, chat template."""
  state = {"vocab": sorted(tokenizer.get_vocab().items()),
           "special": tokenizer.special_tokens_map, "template": tokenizer.chat_template}
  return fingerprint(state)


class _Samplers:
  """Samplers shared by models of one architecture and tokenizer, so they compile once.

  A sampler's programs take the weights as arguments, so the chain's checkpoints of one base
  model (base, +MemTrain, +MemAgent, ...) reuse every program the first of them compiled.
  """

  def __init__(self, cfg, mesh):
    self.cfg, self.mesh = cfg, mesh
    self._samplers: dict[tuple, Sampler] = {}

  def get(self, kind: str, model_config, tokenizer) -> Sampler:
    config = search_sampler_config(self.cfg) if kind == "search" else long_qa_sampler_config(self.cfg)
    key = (config, model_config, _tokenizer_key(tokenizer))
    if key not in self._samplers:
      self._samplers[key] = Sampler(model_config, tokenizer, config, mesh=self.mesh)
    return self._samplers[key]


class _LoadedModel:
  """One model's weights and tokenizer, with its samplers drawn from the shared pool."""

  def __init__(self, cfg, path: str, samplers: _Samplers):
    start = time.time()
    self.config, self.params = models.load_pretrained(
        path, dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype,
        mesh=samplers.mesh, rules="rollout")
    self.tokenizer = models.load_tokenizer(path)
    self._samplers = samplers
    log.info("loaded %s (%s, %.0fM params) in %.1fs", path, self.config.family,
             self.config.num_params() / 1e6, time.time() - start)

  def sampler(self, kind: str) -> Sampler:
    """The 'long_qa' or the 'search' sampler (which stops at the search actions)."""
    return self._samplers.get(kind, self.config, self.tokenizer)


class _ProgressSampler:
  """A sampler that logs each generate call: a cell at 896K tokens makes ~180 of them."""

  def __init__(self, sampler: Sampler, start: float):
    self._sampler, self._start, self._calls = sampler, start, 0

  def __getattr__(self, name):
    return getattr(self._sampler, name)

  def generate(self, params, prompts, **kwargs):
    out = self._sampler.generate(params, prompts, **kwargs)
    self._calls += 1
    log.info("    generate call %d: %d completions, longest prompt %d tokens (cell %s)",
             self._calls, len(out), max(len(p) for p in prompts),
             format_duration(time.time() - self._start))
    return out


def run_cell(spec: CellSpec, model: _LoadedModel, inputs: _Inputs, cfg) -> tuple[dict, list]:
  """Runs one cell; returns (aggregate result, per-question records)."""
  start = time.time()
  if spec.task == "search_qa":
    sampler = _ProgressSampler(model.sampler("search"), start)
    records = searchqa.run_search_cell(sampler, model.params, inputs.tasks(spec.settings["source"]),
                                       inputs.retriever(), cfg)
    return searchqa.aggregate(records), records
  target = spec.settings["target"]
  samples, question_index = inputs.samples(target["kind"], target["value"])
  run = (longqa.run_full_context_cell if spec.mode == config_lib.FULL_CONTEXT
         else longqa.run_memory_agent_cell)
  sampler = _ProgressSampler(model.sampler("long_qa"), start)
  records = run(sampler, model.params, samples, cfg, question_index)
  return longqa.aggregate(records), records


def _describe(result: Mapping) -> str:
  if "sub_em" in result:
    return (f"sub-EM {100 * result['sub_em']:.2f}% EM {100 * result['em']:.2f}% "
            f"F1 {100 * result['f1']:.2f}% over {result['num_questions']} questions")
  return (f"EM {100 * result['em']:.2f}% over {result['num_tasks']} tasks, "
          f"{result['searches_mean']:.2f} searches / {result['turns_mean']:.2f} turns")


def run_eval(cfg, workdir: epath.PathLike) -> dict:
  """Runs (or resumes) the evaluation in `workdir`; returns the report's results dict.

  `workdir` is a local directory or an epath URL (`gs://bucket/eval`). On a multi-process job
  every process calls this and gets the same dict; process 0 alone writes (module docstring).
  """
  shd.maybe_initialize_distributed()
  config_lib.validate_eval_config(cfg)
  primary = shd.is_primary()
  workdir = paths.as_path(workdir)
  store = CellStore(workdir)
  plan = plan_cells(cfg)
  # Process 0 reads the finished cells before anything of this run is written, and every process
  # follows what it read: all of them run the same cells, in the same order.
  done = shd.from_primary({spec.key: store.load(spec) for spec in plan} if primary else None)
  todo = [spec for spec in plan if done[spec.key] is None]
  log.info("%d cells planned, %d already done in %s, %d to run", len(plan),
           len(plan) - len(todo), workdir, len(todo))
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "eval_config.json").write_text(cfg.to_json(indent=2), encoding="utf-8")
  inputs = _Inputs(cfg)
  samplers = None
  start = time.time()
  for name, path in config_lib.model_specs(cfg):
    cells = [spec for spec in todo if spec.model == name]
    if not cells:
      continue
    if samplers is None:
      mesh = shd.make_mesh(cfg.mesh.shape)
      log.info("mesh %s over %d %s device(s), %d process(es)", dict(mesh.shape), mesh.size,
               jax.devices()[0].platform, jax.process_count())
      samplers = _Samplers(cfg, mesh)
    model = _LoadedModel(cfg, path, samplers)
    for spec in cells:
      position = todo.index(spec) + 1
      log.info("[%d/%d] %s %s %s %s ...", position, len(todo), spec.task, name, spec.mode,
               spec.column)
      cell_start = time.time()
      result, records = run_cell(spec, model, inputs, cfg)
      result["seconds"] = round(time.time() - cell_start, 2)
      done[spec.key] = (store.save(spec, result, records) if primary
                        else cells_lib.record(spec, result))
      log.info("[%d/%d] %s %s %s %s: %s in %s (total %s)", position, len(todo), spec.task, name,
               spec.mode, spec.column, _describe(result), format_duration(result["seconds"]),
               format_duration(time.time() - start))
    del model  # frees the weights before the next model loads
  # Process 0's records (its timings among them) make every process's report.
  built = report.build_report(shd.from_primary([done[spec.key] for spec in plan]), cfg)
  if primary:
    report.save_report(built, workdir)
    log.info("wrote %s in %s", ", ".join(built.results["files"].values()) or "results.json",
             workdir)
  if jax.process_count() > 1:
    fetches = shd.TRANSFERS
    log.info("process %d: %.2fs in %d device-to-host fetches (%d of them cross-process gathers)",
             jax.process_index(), fetches.seconds, fetches.calls, fetches.gathered_calls)
  shd.sync("memtrain_eval_report_written")  # every process returns once the report is on disk
  return built.results
