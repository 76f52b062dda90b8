"""The MemTrain trainer: documents -> rollouts -> rewards -> advantages -> packed GRPO updates.

  memtrain train --config configs/default.py --workdir runs/default [--config.rl.kl_coef=0 ...]
  python -m memtrain_jax.train --config ... --workdir ...

One training step:
1. take `train.batch_documents` documents from the resumable stream;
2. run the memory agent: G1 trajectories per document through every chunk, then the final answer
   (objective `objectives.end_to_end`);
3. build one probe per trajectory with the probe objective (`objectives.recall`, intermediate
   memory recall by default) and sample G2 answers for it;
4. score: R^I per probe sample, R^E = 1[final correct] + lambda * mean R^I of its own probe;
   advantages are group-centred and broadcast to every row of a trajectory;
5. pack the rows into fixed-shape micro-batches and run `ppo_epochs x num_mini_batches` jitted,
   donated, sharded updates (reference log-probs first when the KL coefficient is not 0);
6. write metrics, dump a few rollouts, checkpoint (and stop cleanly on SIGTERM / SIGINT).

Every random choice is seeded from (train.seed, step), and the data position is checkpointed, so
a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time

import jax
import numpy as np
from etils import epath

from memtrain_jax import config_lib, metrics as metrics_lib, models, objectives, paths, rewards
from memtrain_jax import sharding as shd
from memtrain_jax.agent import memory_agent, search_env, search_rollout
from memtrain_jax.agent.rows import InteractionRows, RowKind
from memtrain_jax.checkpoint import Checkpointer
from memtrain_jax.data.stream import DocumentStream
from memtrain_jax.rl import advantages as adv_lib
from memtrain_jax.rl import packing as packing_lib
from memtrain_jax.rl import train_step as step_lib
from memtrain_jax.sampling.sampler import Sampler, SamplerConfig
from memtrain_jax.seeding import derive_seed

log = logging.getLogger("memtrain")


# ----------------------------------------------------------------------------------------------
# Set-up.


def prepare_data(cfg, workdir, tokenizer) -> epath.Path:
  """The built data set's directory: `train.data_dir`, or built once under <workdir>/data.

  On a multi-process job process 0 builds it and the others wait for it, then every process
  reads the same documents (see `train`).

  What is built depends on `task.name`: MemTrain documents (the data pipeline), RULER-HotpotQA
  documents (long_qa) or multi-question search tasks (search_qa). Documents are sized and chunked
  in the policy's own tokens (unless data.tokenizer.path says otherwise for MemTrain), so a chunk
  of `data.chunking.chunk_size` tokens is what the agent really reads.
  """
  if cfg.train.data_dir:
    return paths.as_path(cfg.train.data_dir)
  out = paths.as_path(workdir) / "data"
  if not shd.is_primary():
    shd.sync("memtrain_data_built")
    return out
  if (out / "stats.json").exists():
    shd.sync("memtrain_data_built")
    return out
  start = time.time()
  if cfg.task.name == "long_qa":
    from memtrain_jax.tasks import longqa
    task = cfg.task.long_qa
    report = longqa.build_training_set(
        task.source, out, tokenizer, target_tokens=tuple(task.target_tokens),
        chunk_size=cfg.data.chunking.chunk_size, question_start=task.question_start,
        question_count=task.question_count, seed=task.seed,
        length_tolerance=task.length_tolerance)
  elif cfg.task.name == "search_qa":
    from memtrain_jax.tasks import searchqa
    task = cfg.task.search_qa
    tasks = searchqa.load_tasks(task.source, questions_per_task=task.questions_per_task,
                                start=task.question_start, count=task.question_count)
    report = searchqa.write_tasks(tasks, out, {"task": "search_qa", "source": task.source})
  else:
    from memtrain_jax.data.pipeline import build_dataset
    from memtrain_jax.data.tokens import TokenCounter
    counter = None if cfg.data.tokenizer.path else TokenCounter(tokenizer)
    report = build_dataset(cfg.data, out, counter=counter)
  log.info("built %s %s documents in %.1fs into %s", report.get("documents"), cfg.task.name,
           time.time() - start, out)
  shd.sync("memtrain_data_built")
  return out


def sampler_config(cfg) -> SamplerConfig:
  agent = cfg.agent
  if cfg.task.name == "search_qa":
    # A reply ends at its first closing action tag, as the search environment parses it.
    budget, stops = cfg.task.search_qa.max_response_tokens, search_rollout.STOP_STRINGS
  else:
    budget = max(agent.memory_max_tokens, agent.answer_max_tokens, agent.recall_max_tokens)
    stops = ()
  # The prompt buckets above the longest prompt are dropped, the smallest one that holds it kept.
  longest = config_lib.longest_prompt_tokens(cfg)
  buckets = tuple(b for b in cfg.sampling.prompt_buckets if b < longest) + (
      next((b for b in cfg.sampling.prompt_buckets if b >= longest), longest),)
  return SamplerConfig(prompt_buckets=buckets, batch_buckets=tuple(cfg.sampling.batch_buckets),
                       max_new_tokens=budget, stop_strings=stops,
                       **config_lib.sampler_settings(cfg.sampling))


def search_env_config(cfg) -> search_env.SearchEnvConfig:
  task = cfg.task.search_qa
  return search_env.SearchEnvConfig(max_turns=task.max_turns,
                                    max_response_tokens=task.max_response_tokens,
                                    max_obs_tokens=task.max_obs_tokens, topk=task.topk)


def agent_config(cfg) -> memory_agent.AgentConfig:
  """Budgets and prompts of the agent; each document brings its own problem (`AgentDocument`)."""
  return memory_agent.AgentConfig(
      memory_max_tokens=cfg.agent.memory_max_tokens, answer_max_tokens=cfg.agent.answer_max_tokens,
      recall_max_tokens=cfg.agent.recall_max_tokens, initial_memory=cfg.agent.initial_memory,
      answer_prefix=cfg.agent.answer_prefix)


# ----------------------------------------------------------------------------------------------
# One rollout batch.


@dataclasses.dataclass
class RolloutBatch:
  """The rows of one step with their scores, and what the metrics and dumps need."""
  rows: InteractionRows
  correct: dict[int, float]  # sample_id -> 0/1 (final answers and probe samples)
  documents: list[dict]
  rollout: memory_agent.AgentRollout
  probes: list[objectives.Probe]
  probe_answers: list[list[str]]
  probe_scores: list[list[float]]
  final_scores: np.ndarray  # [num_trajectories]

  def end_to_end_rewards(self, lam: float) -> np.ndarray:
    """R^E per trajectory (paper Eq. 2): the final answer plus lambda * its probe's success."""
    bonus = np.zeros_like(self.final_scores, dtype=np.float64)
    for probe, scores in zip(self.probes, self.probe_scores):
      bonus[probe.trajectory] = lam * float(np.mean(scores))
    return self.final_scores + bonus


def collect_rollouts(cfg, step: int, sampler, params, documents: list[dict], e2e_objective,
                     probe_objective) -> RolloutBatch:
  """Runs the agent and the probes of one step and scores every sample."""
  sampling = dict(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                  top_k=cfg.sampling.top_k)
  acfg = agent_config(cfg)
  agent_docs = [memory_agent.AgentDocument.from_built(d, e2e_objective.problem(d)) for d in documents]
  rollout = memory_agent.run_memory_agent(
      sampler, params, agent_docs, num_rollouts=cfg.objectives.end_to_end.num_rollouts,
      config=acfg, seed=derive_seed(cfg.train.seed, step, 0), **sampling)
  num_traj = rollout.num_trajectories
  final_scores = np.array([e2e_objective.score(documents[rollout.document_index[j]],
                                               rollout.final_answers[j]) for j in range(num_traj)],
                          np.float64)
  correct = {j: float(final_scores[j]) for j in range(num_traj)}
  rows, probes, probe_answers, probe_scores = rollout.rows, [], [], []
  if probe_objective is not None:
    rng = np.random.default_rng(derive_seed(cfg.train.seed, step, 1))
    for j in range(num_traj):
      trajectory = objectives.Trajectory(document=documents[rollout.document_index[j]],
                                         memories=tuple(rollout.memories[j]),
                                         final_answer=rollout.final_answers[j])
      probe = probe_objective.build_probe(j, trajectory, rng)
      if probe is not None:
        probes.append(probe)
    probe_rollout = memory_agent.run_probes(
        sampler, params, probes, num_samples=cfg.objectives.recall.num_samples,
        first_sample_id=num_traj, first_group_id=rollout.num_documents, config=acfg,
        seed=derive_seed(cfg.train.seed, step, 2), **sampling)
    for p, probe in enumerate(probes):
      answers = probe_rollout.answers[p]
      scores = [probe_objective.score(probe, text) for text in answers]
      probe_answers.append(answers)
      probe_scores.append(scores)
      for sample_id, value in zip(probe_rollout.sample_ids[p], scores):
        correct[int(sample_id)] = value
    rows = InteractionRows.concatenate([rows, probe_rollout.rows])
  return RolloutBatch(rows, correct, documents, rollout, probes, probe_answers, probe_scores,
                      final_scores)


def rollout_metrics(batch: RolloutBatch, lam: float) -> dict[str, float]:
  rows, rollout = batch.rows, batch.rollout
  lengths = np.array([len(c) for c in rows.completion_tokens])
  out = {"rewards/e2e_reward_mean": float(batch.end_to_end_rewards(lam).mean()),
         "accuracy/e2e_final": float(batch.final_scores.mean())}
  if batch.probes:
    out["accuracy/recall"] = float(np.mean(batch.probe_scores))
  out["recall/probed_fraction"] = len(batch.probes) / max(rollout.num_trajectories, 1)
  memory = rows.kind == RowKind.MEMORY_UPDATE
  out["memory/length_tokens"] = float(lengths[memory].mean()) if memory.any() else 0.0
  truncated = [t for per_traj in rollout.memory_truncated for t in per_traj]
  out["memory/truncated_fraction"] = float(np.mean(truncated)) if truncated else 0.0
  answers = rows.kind != RowKind.MEMORY_UPDATE
  out["answers/boxed_fraction"] = float(np.mean(
      [rewards.extract_boxed(t) is not None for t, a in zip(rows.completion_text, answers) if a]))
  return {**out, **row_metrics(rows)}


def row_metrics(rows: InteractionRows) -> dict[str, float]:
  return {"rows/count": float(len(rows)),
          "rows/completion_tokens": float(sum(len(c) for c in rows.completion_tokens)),
          "rows/prompt_tokens": float(sum(len(p) for p in rows.prompt_tokens))}


def rollout_examples(batch: RolloutBatch, lam: float, e2e_objective, count: int):
  """The first `count` trajectories as readable `metrics.RolloutExample`s."""
  rollout = batch.rollout
  e2e = batch.end_to_end_rewards(lam)
  probe_of = {probe.trajectory: p for p, probe in enumerate(batch.probes)}
  examples = []
  for j in range(min(count, rollout.num_trajectories)):
    doc = batch.documents[rollout.document_index[j]]
    recall = ()
    if j in probe_of:
      p = probe_of[j]
      target = batch.probes[p].answers[0]
      recall = tuple((target, a, s) for a, s in zip(batch.probe_answers[p], batch.probe_scores[p]))
    examples.append(metrics_lib.RolloutExample(
        document="\n\n".join(doc["chunks"]), problem=e2e_objective.problem(doc),
        memories=rollout.memories[j], answer=rollout.final_answers[j],
        gold=list(e2e_objective.golds(doc)), reward=float(e2e[j]), recall=recall))
  return examples


# ----------------------------------------------------------------------------------------------
# One search batch (task.name = 'search_qa', MEM1).


@dataclasses.dataclass
class SearchRolloutBatch:
  """G episodes per search task, one row per turn; an episode's reward is its averaged EM."""
  rows: InteractionRows
  correct: dict[int, float]  # sample_id (= episode) -> reward in [0, 1]
  episodes: list[search_env.Episode]


def collect_search_rollouts(cfg, step: int, sampler, params, documents: list[dict],
                            retriever) -> SearchRolloutBatch:
  from memtrain_jax.tasks import searchqa
  episodes, rows = search_rollout.run_search_rollouts(
      sampler, params, [searchqa.task_from_row(d) for d in documents], retriever,
      search_env_config(cfg), num_rollouts=cfg.objectives.end_to_end.num_rollouts,
      temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k,
      seed=derive_seed(cfg.train.seed, step, 0))
  return SearchRolloutBatch(rows, {e: ep.reward for e, ep in enumerate(episodes)}, episodes)


def search_metrics(batch: SearchRolloutBatch) -> dict[str, float]:
  episodes = batch.episodes
  rewards_ = np.array([e.reward for e in episodes], np.float64)
  turns = [t for e in episodes for t in e.turns]
  out = {"rewards/e2e_reward_mean": float(rewards_.mean()),
         "accuracy/e2e_final": float(np.mean(rewards_ == 1.0)),
         "search/turns_mean": float(np.mean([len(e.turns) for e in episodes])),
         "search/searches_mean": float(np.mean([e.num_searches for e in episodes])),
         "search/answered_fraction": float(np.mean([e.answer is not None for e in episodes])),
         "search/invalid_turn_fraction": float(np.mean(
             [t.action == search_env.INVALID for t in turns])),
         "search/state_fraction": float(np.mean([t.internal_state is not None for t in turns]))}
  return {**out, **row_metrics(batch.rows)}


def search_examples(batch: SearchRolloutBatch, count: int):
  examples = []
  for episode in batch.episodes[:count]:
    examples.append(metrics_lib.RolloutExample(
        document="", problem="\n".join(episode.task.questions),
        memories=[t.response + t.observation for t in episode.turns],
        answer=episode.answer or "(no answer)",
        gold=[" | ".join(g) for g in episode.task.golds], reward=episode.reward))
  return examples


# ----------------------------------------------------------------------------------------------
# Updates.


def split_mini_batches(rows: InteractionRows, num_mini_batches: int, seed: int) -> list[InteractionRows]:
  """Splits the rows into `num_mini_batches` parts of near-equal size, in a seeded random order."""
  if num_mini_batches == 1:
    return [rows]
  order = np.random.default_rng(seed).permutation(len(rows))
  parts = []
  for indices in np.array_split(order, num_mini_batches):
    keep = np.zeros(len(rows), bool)
    keep[indices] = True
    if keep.any():
      parts.append(adv_lib.select_rows(rows, keep))
  return parts


class NonFiniteUpdatesError(RuntimeError):
  """Too many updates in a row had a non-finite loss or gradient (each one was skipped)."""


def run_updates(cfg, step: int, state, rows: InteractionRows, *, mesh, train_step, logprob_fn,
                ref_params, packing_cfg, timer, skipped_in_a_row: int = 0
                ) -> tuple[object, dict[str, float], int]:
  """ppo_epochs x num_mini_batches optimizer updates on the rows.

  An update whose loss or gradient is not finite leaves the state as it was (the train step
  checks); `train.max_consecutive_skipped` of them in a row, counted across steps from
  `skipped_in_a_row`, raise NonFiniteUpdatesError before anything else is saved.

  Returns:
    (state, mean metrics, skipped updates in a row at the end).
  """
  collected: dict[str, list[float]] = {}
  trained_tokens = 0
  for epoch in range(cfg.rl.ppo_epochs):
    for mini in split_mini_batches(rows, cfg.rl.num_mini_batches,
                                   derive_seed(cfg.train.seed, step, 10 + epoch)):
      packed = packing_lib.pack_rows(mini, packing_cfg)
      ref_logp = None
      if logprob_fn is not None:
        inputs = step_lib.shard_batch(packed, mesh, fields=step_lib.LOGPROB_BATCH_FIELDS)
        ref_logp = timer.call("logprobs", logprob_fn, ref_params, inputs)
      batch = step_lib.shard_batch(packed, mesh, ref_logp=ref_logp)
      with timer.section("update"):
        state, metrics = train_step(state, batch)
        metrics = shd.to_host(metrics)
      skipped = bool(metrics.pop("skipped_nonfinite", 0.0))
      skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
      collected.setdefault("train/skipped_updates", []).append(float(skipped))
      if skipped:
        log.warning("step %d: non-finite loss %s or gradient norm %s; the update was skipped "
                    "(%d in a row)", step, metrics.get("loss"), metrics.get("grad_norm"),
                    skipped_in_a_row)
        if skipped_in_a_row >= cfg.train.max_consecutive_skipped:
          raise NonFiniteUpdatesError(
              f"step {step}: {skipped_in_a_row} updates in a row had a non-finite loss or "
              f"gradient (last loss {metrics.get('loss')}, gradient norm "
              f"{metrics.get('grad_norm')}); none of them touched the weights, and the run stops "
              "here without saving, so the last checkpoint is the last good state. Lower "
              "optim.lr, check the data of this step, or raise train.max_consecutive_skipped")
        continue
      trained_tokens += int(packed.loss_mask.sum())
      for name, value in metrics.items():
        collected.setdefault(f"train/{name}", []).append(float(value))
  skipped_updates = collected.pop("train/skipped_updates", [])
  out = {name: float(np.mean(values)) for name, values in collected.items()}
  out["train/updates"] = float(len(collected.get("train/loss", [])))
  out["train/skipped_updates"] = float(np.sum(skipped_updates))
  out["train/trained_tokens"] = float(trained_tokens)
  return state, out, skipped_in_a_row


# ----------------------------------------------------------------------------------------------
# The loop.


def _resume_conflict(cfg, workdir: epath.Path) -> str | None:
  """Why this run may not resume the checkpointed run in `workdir` (see RESUME_MAY_CHANGE), or
  None when it may (or there is nothing to resume)."""
  ckpt_dir, saved_path = workdir / "checkpoints", workdir / "config.json"
  has_checkpoint = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
  if not (has_checkpoint and saved_path.exists()):
    return None
  saved = json.loads(saved_path.read_text())
  conflicts = config_lib.resume_conflicts(saved, cfg)
  if not conflicts:
    return None
  return (f"--workdir {workdir} holds a checkpointed run whose config differs from this one in "
          f"{len(conflicts)} field(s): " + "; ".join(conflicts[:10]) +
          (" ..." if len(conflicts) > 10 else "") + ". Resuming would splice two runs together: "
          f"use a new --workdir, pass the same settings again, or delete {ckpt_dir} to restart.")


def train(cfg, workdir: epath.PathLike) -> dict[str, float]:
  """Runs (or resumes) training in `workdir`; returns the last step's metrics.

  Multi-process jobs (a TPU pod slice, several GPU nodes; `sharding.maybe_initialize_distributed`)
  run this same function on every process. Every process reads the same documents and computes
  the same global batch: rollouts, rewards and packing are deterministic host work, the sampler
  and the update run over the global mesh, and their outputs reach every process
  (`sharding.to_host`). So every process runs the same programs with the same shapes, and the
  data position in the checkpoint is one number. Process 0 alone writes the config, the data,
  metrics, rollout dumps and the export; every process writes its own checkpoint shards.
  """
  config_lib.validate(cfg)
  shd.maybe_initialize_distributed()
  primary = shd.is_primary()
  workdir = paths.as_path(workdir)
  # Process 0 reads the saved config (before it rewrites it) and every process gets its verdict.
  conflict = shd.from_primary(_resume_conflict(cfg, workdir) if primary else None)
  if conflict:
    raise ValueError(conflict)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json(indent=2))
  mesh = shd.make_mesh(cfg.mesh.shape)
  log.info("mesh %s over %d %s device(s), %d process(es)", dict(mesh.shape), mesh.size,
           jax.devices()[0].platform, jax.process_count())
  step_lib.check_micro_batch_size(cfg.rl.packing.micro_batch_size, mesh)

  start = time.time()
  model_config, params = models.load_pretrained(
      cfg.model.path, dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype,
      mesh=mesh, rules="train", scan_layers=cfg.model.scan_layers, remat=cfg.model.remat)
  tokenizer = models.load_tokenizer(cfg.model.path)
  log.info("loaded %s (%.0fM params) in %.1fs", model_config.family, model_config.num_params() / 1e6,
           time.time() - start)

  data_dir = prepare_data(cfg, workdir, tokenizer)
  stream = DocumentStream(data_dir, seed=cfg.train.seed)
  e2e_objective = objectives.make(cfg.objectives.end_to_end.name, cfg.objectives.end_to_end,
                                  module=cfg.objectives.end_to_end.module or None)
  retriever = None
  if cfg.task.name == "search_qa":
    from memtrain_jax.tasks import searchqa
    retriever = searchqa.make_retriever(cfg.task.search_qa.retrieval_url,
                                        cfg.task.search_qa.corpus)
  probe_objective = None
  if cfg.objectives.recall.enabled:
    probe_objective = objectives.make(cfg.objectives.recall.name, cfg.objectives.recall,
                                      module=cfg.objectives.recall.module or None)
  lam = cfg.objectives.recall.lam if probe_objective is not None else 0.0

  sampler = Sampler(model_config, tokenizer, sampler_config(cfg), mesh=mesh)
  rollout_shardings = shd.param_shardings(model_config, mesh, "rollout")
  # Rollouts sample from the weight matrices in the compute dtype: with f32 master weights and
  # bf16 compute, a bf16 copy (half the bytes per decode step); otherwise the weights themselves.
  if model_config.dtype != model_config.weight_dtype:
    rollout_copy = jax.jit(functools.partial(models.compute_params, model_config),
                           out_shardings=rollout_shardings)
  else:
    rollout_copy = functools.partial(jax.device_put, device=rollout_shardings)
  optimizer = step_lib.make_optimizer(config_lib.optim_section(cfg), config_lib.updates_per_step(cfg))
  loss_cfg = config_lib.loss_config(cfg)
  adv_cfg = config_lib.advantage_config(cfg)
  packing_cfg = config_lib.packing_config(cfg, pad_id=sampler.pad_id)
  # The frozen reference policy is a copy: the train step donates (reuses) the state's buffers.
  ref_params = jax.tree.map(lambda x: x.copy(), params) if loss_cfg.kl_coef else None
  logprob_fn = (step_lib.make_logprob_fn(model_config, mesh, chunk_size=cfg.rl.packing.logprob_chunk_size)
                if loss_cfg.kl_coef else None)
  state = step_lib.create_train_state(model_config, params, optimizer, mesh)
  del params
  train_step = step_lib.make_train_step(model_config, loss_cfg, optimizer, mesh,
                                        chunk_size=cfg.rl.packing.logprob_chunk_size)

  ckpt = Checkpointer(workdir / "checkpoints", every=cfg.checkpoint.every,
                      keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
  done = 0
  restored = ckpt.restore(step_lib.abstract_state(model_config, optimizer, mesh))
  if restored is not None:
    state, extra = restored
    done = int(extra["step"])
    stream.restore(extra["data"])
    log.info("resumed from the checkpoint of step %d", done)

  def extra_for(step):
    return {"data": stream.state(), "config": cfg.to_dict()}

  # It writes on process 0 only; elsewhere it just returns the record.
  writer = metrics_lib.MetricsWriter(workdir, total_steps=cfg.train.num_steps,
                                     reward_key="rewards/e2e_reward_mean", write_process=primary)
  if done == 0:
    writer.write_text(0, "config", "```\n" + cfg.to_json(indent=2) + "\n```")
  timer = metrics_lib.Timer()
  record: dict[str, float] = {}
  stopped = False
  skipped_in_a_row = 0
  try:
    while done < cfg.train.num_steps:
      step = done + 1
      documents = [next(stream) for _ in range(cfg.train.batch_documents)]
      fetch_seconds = shd.TRANSFERS.seconds
      with timer.section("rollout"):
        rollout_params = rollout_copy(state.params)
        if retriever is not None:
          batch = collect_search_rollouts(cfg, step, sampler, rollout_params, documents, retriever)
        else:
          batch = collect_rollouts(cfg, step, sampler, rollout_params, documents, e2e_objective,
                                   probe_objective)
        del rollout_params
        # The packed weights were made for these parameters, which the update replaces.
        sampler.release_packed_weights()
      stats = adv_lib.fill_advantages(batch.rows, batch.correct, adv_cfg)
      kept = adv_lib.select_rows(batch.rows, stats.row_keep)
      batch_metrics = (search_metrics(batch) if retriever is not None else
                       rollout_metrics(batch, lam))
      step_metrics = {**batch_metrics, **stats.as_metrics()}
      if len(kept):
        state, update_metrics, skipped_in_a_row = run_updates(
            cfg, step, state, kept, mesh=mesh, train_step=train_step, logprob_fn=logprob_fn,
            ref_params=ref_params, packing_cfg=packing_cfg, timer=timer,
            skipped_in_a_row=skipped_in_a_row)
        step_metrics.update(update_metrics)
      else:
        step_metrics["train/updates"] = 0.0  # every group was degenerate (DAPO): nothing to learn
      step_metrics["compile/sampler_programs"] = float(sampler.num_compiles())
      step_metrics.update(timer.pop())
      # Device-to-host fetches (cross-process gathers on a multi-process job), process 0's.
      step_metrics["time/host_fetch"] = shd.TRANSFERS.seconds - fetch_seconds
      tokens = step_metrics["rows/prompt_tokens"] + step_metrics["rows/completion_tokens"]
      record = writer.write(step, step_metrics, tokens=tokens)
      done = step
      if (primary and cfg.train.dump_rollouts_every and
          step % cfg.train.dump_rollouts_every == 0):
        count = cfg.train.dump_rollouts_count
        examples = (search_examples(batch, count) if retriever is not None else
                    rollout_examples(batch, lam, e2e_objective, count))
        metrics_lib.dump_rollouts(workdir, step, examples, max_examples=count)
      if ckpt.step_end(done, state, extra_for(done)):
        stopped = True
        log.warning("stopping after step %d (%s); the checkpoint is saved", done,
                    ckpt.stop.signal_name)
        break
    ckpt.save(done, state, extra_for(done))
  finally:
    ckpt.close()
    writer.close()
    fetches = shd.TRANSFERS
    log.info("process %d: %.2fs in %d device-to-host fetches (%d of them cross-process gathers)",
             jax.process_index(), fetches.seconds, fetches.calls, fetches.gathered_calls)
  if not stopped and done >= cfg.train.num_steps:
    out_dir = paths.as_path(cfg.export.hf_dir) if cfg.export.hf_dir else workdir / "hf"
    export(model_config, state.params, tokenizer, out_dir)
  return record


def export(model_config, params, tokenizer, out_dir: epath.Path) -> None:
  """Writes the HF export from process 0; on a multi-process job every process must call it.

  One process streams the weights a tensor at a time (`models.save_pretrained`). On several, the
  weights span processes: every process gathers them leaf by leaf in the same (tree) order, a
  collective, and the others drop each leaf as soon as it is gathered.
  """
  if jax.process_count() > 1:
    leaves, treedef = jax.tree.flatten(params)
    gathered = []
    for leaf in leaves:
      value = shd.to_host(leaf)
      gathered.append(value if shd.is_primary() else None)
    if not shd.is_primary():
      return
    params = jax.tree.unflatten(treedef, gathered)
  models.save_pretrained(model_config, params, tokenizer, out_dir)
  log.info("exported the trained model to %s", out_dir)


def main(argv: list[str] | None = None) -> int:
  parsed = config_lib.parse_command_line(
      "memtrain train", __doc__, argv, config_lib.validate,
      config_help="a configs/*.py file (optionally FILE:arg)",
      workdir_help="run directory: checkpoints, metrics, export",
      example_override="--config.rl.kl_coef=0")
  if parsed is None:
    return 2
  cfg, workdir = parsed
  train(cfg, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
