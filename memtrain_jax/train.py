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
import os
import sys
import time

import jax
import numpy as np

from memtrain_jax import config_lib, metrics as metrics_lib, models, objectives, rewards
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


def prepare_data(cfg, workdir: str, tokenizer) -> str:
  """The built data set's directory: `train.data_dir`, or built once under <workdir>/data.

  What is built depends on `task.name`: MemTrain documents (the data pipeline), RULER-HotpotQA
  documents (long_qa) or multi-question search tasks (search_qa). Documents are sized and chunked
  in the policy's own tokens (unless data.tokenizer.path says otherwise for MemTrain), so a chunk
  of `data.chunking.chunk_size` tokens is what the agent really reads.
  """
  if cfg.train.data_dir:
    return os.path.expanduser(cfg.train.data_dir)
  out = os.path.join(workdir, "data")
  if os.path.exists(os.path.join(out, "stats.json")):
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


def run_updates(cfg, step: int, state, rows: InteractionRows, *, mesh, train_step, logprob_fn,
                ref_params, packing_cfg, timer) -> tuple[object, dict[str, float]]:
  """ppo_epochs x num_mini_batches optimizer updates on the rows; returns (state, mean metrics)."""
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
        metrics = jax.device_get(metrics)
      trained_tokens += int(packed.loss_mask.sum())
      for name, value in metrics.items():
        collected.setdefault(f"train/{name}", []).append(float(value))
  out = {name: float(np.mean(values)) for name, values in collected.items()}
  out["train/updates"] = float(len(collected.get("train/loss", [])))
  out["train/trained_tokens"] = float(trained_tokens)
  return state, out


# ----------------------------------------------------------------------------------------------
# The loop.


def _check_resumed_config(cfg, workdir: str) -> None:
  """Refuses to resume a checkpointed run under a different config (see RESUME_MAY_CHANGE)."""
  ckpt_dir, saved_path = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "config.json")
  has_checkpoint = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  if not (has_checkpoint and os.path.exists(saved_path)):
    return
  with open(saved_path) as f:
    saved = json.load(f)
  conflicts = config_lib.resume_conflicts(saved, cfg)
  if conflicts:
    raise ValueError(
        f"--workdir {workdir} holds a checkpointed run whose config differs from this one in "
        f"{len(conflicts)} field(s): " + "; ".join(conflicts[:10]) +
        (" ..." if len(conflicts) > 10 else "") + ". Resuming would splice two runs together: "
        f"use a new --workdir, pass the same settings again, or delete {ckpt_dir} to restart.")


def train(cfg, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training in `workdir`; returns the last step's metrics."""
  config_lib.validate(cfg)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  _check_resumed_config(cfg, workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(cfg.to_json(indent=2))
  shd.maybe_initialize_distributed()
  mesh = shd.make_mesh(cfg.mesh.shape)
  log.info("mesh %s over %d %s device(s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
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

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=cfg.checkpoint.every,
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

  writer = metrics_lib.MetricsWriter(workdir, total_steps=cfg.train.num_steps,
                                     reward_key="rewards/e2e_reward_mean")
  if done == 0:
    writer.write_text(0, "config", "```\n" + cfg.to_json(indent=2) + "\n```")
  timer = metrics_lib.Timer()
  record: dict[str, float] = {}
  stopped = False
  try:
    while done < cfg.train.num_steps:
      step = done + 1
      documents = [next(stream) for _ in range(cfg.train.batch_documents)]
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
        state, update_metrics = run_updates(cfg, step, state, kept, mesh=mesh, train_step=train_step,
                                            logprob_fn=logprob_fn, ref_params=ref_params,
                                            packing_cfg=packing_cfg, timer=timer)
        step_metrics.update(update_metrics)
      else:
        step_metrics["train/updates"] = 0.0  # every group was degenerate (DAPO): nothing to learn
      step_metrics["compile/sampler_programs"] = float(sampler.num_compiles())
      step_metrics.update(timer.pop())
      tokens = step_metrics["rows/prompt_tokens"] + step_metrics["rows/completion_tokens"]
      record = writer.write(step, step_metrics, tokens=tokens)
      done = step
      if cfg.train.dump_rollouts_every and step % cfg.train.dump_rollouts_every == 0:
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
  if not stopped and done >= cfg.train.num_steps:
    out_dir = cfg.export.hf_dir or os.path.join(workdir, "hf")
    models.save_pretrained(model_config, state.params, tokenizer, out_dir)
    log.info("exported the trained model to %s", out_dir)
  return record


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
