"""Task RL through the MemTrain trainer: MemAgent long-text QA and MEM1 search QA (tiny model).

The tiny Llama has SmolLM2's real tokenizer and chat template with random weights; DAPO filtering
is off in the CPU configs, so every step trains whatever rewards chance gives.
"""

import json
import os

import numpy as np
import pytest

from memtrain_jax import config_lib
from memtrain_jax.agent.rows import RowKind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tiny(config_file, model_dir, *overrides):
  return config_lib.load_config(os.path.join(ROOT, "configs", config_file) + ":" + model_dir, [
      "train.num_steps=2", "optim.lr=1e-3", "train.batch_documents=2",
      "rl.packing.micro_batch_size=8", *overrides])  # 8 virtual devices along fsdp


def test_memagent_task_rl_trains_on_final_answers_only(tiny_model_dir, tmp_path):
  from memtrain_jax.train import train
  cfg = _tiny("memagent_cpu.py", tiny_model_dir, "task.long_qa.question_count=4",
              "agent.memory_max_tokens=8", "agent.answer_max_tokens=6",
              "objectives.end_to_end.num_rollouts=2")
  workdir = str(tmp_path / "memagent")
  train(cfg, workdir)
  records = _metrics(workdir)
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    assert r["train/updates"] >= 1 and np.isfinite(r["train/loss"])
    assert "accuracy/recall" not in r and r["recall/probed_fraction"] == 0
  # The training set: questions 16..19 of the bundled HotpotQA at ~512 tokens, 256-token chunks.
  with open(os.path.join(workdir, "data", "documents-00000.jsonl")) as f:
    docs = [json.loads(line) for line in f]
  assert [d["question_index"] for d in docs] == [0, 1, 2, 3]  # indices within the selection
  assert all(2 <= len(d["chunks"]) <= 3 and d["problem"].endswith("?") for d in docs)
  dump = open(os.path.join(workdir, "rollouts", "step_000002.txt")).read()
  assert any(d["problem"] in dump for d in docs)  # each document's own question is the problem
  assert os.path.exists(os.path.join(workdir, "hf", "model.safetensors"))


def test_mem1_search_task_rl_turns_become_rows(tiny_model_dir, tmp_path):
  from memtrain_jax.train import train
  cfg = _tiny("mem1_cpu.py", tiny_model_dir, "task.search_qa.question_count=4", "train.num_steps=1",
              "task.search_qa.max_turns=2", "task.search_qa.max_response_tokens=12",
              "task.search_qa.max_obs_tokens=32", "objectives.end_to_end.num_rollouts=2",
              "rl.packing.seq_len=768")
  workdir = str(tmp_path / "mem1")
  train(cfg, workdir)
  records = _metrics(workdir)
  assert [r["step"] for r in records] == [1]
  for r in records:
    assert r["train/updates"] >= 1 and np.isfinite(r["train/loss"])
    # 2 tasks x 2 episodes, each 1..2 turns, one row per turn.
    assert 4 <= r["rows/count"] <= 8
    assert r["rows/count"] == pytest.approx(4 * r["search/turns_mean"])
    assert 0 <= r["rewards/e2e_reward_mean"] <= 1
  with open(os.path.join(workdir, "data", "documents-00000.jsonl")) as f:
    tasks = [json.loads(line) for line in f]
  assert len(tasks) == 2 and all(len(t["questions"]) == 2 for t in tasks)  # 4 questions, 2 a task
  dump = open(os.path.join(workdir, "rollouts", "step_000001.txt")).read()
  assert any(t["questions"][0] in dump for t in tasks)


def test_search_rollout_rows_match_what_the_sampler_returned(tiny_model_dir):
  """Each turn's row holds the exact sampled tokens and log-probs, in episode order."""
  from memtrain_jax import models
  from memtrain_jax.agent import search_env, search_rollout
  from memtrain_jax.sampling.sampler import Sampler, SamplerConfig
  from memtrain_jax.tasks import longqa, searchqa

  config, params = models.load_pretrained(tiny_model_dir)
  tokenizer = models.load_tokenizer(tiny_model_dir)
  sampler = Sampler(config, tokenizer, SamplerConfig(
      prompt_buckets=(512, 1024), batch_buckets=(1, 2, 4, 8), max_new_tokens=10,
      stop_strings=search_rollout.STOP_STRINGS))
  tasks = searchqa.load_tasks(longqa.BUNDLED_HOTPOTQA, count=4)
  env = search_env.SearchEnvConfig(max_turns=3, max_response_tokens=10, max_obs_tokens=24)
  episodes, rows = search_rollout.run_search_rollouts(
      sampler, params, tasks, searchqa.make_retriever(), env, num_rollouts=3, seed=5)
  assert len(episodes) == 6
  assert len(rows) == sum(len(e.turns) for e in episodes)
  np.testing.assert_array_equal(np.unique(rows.group_id), [0, 1])
  for e, episode in enumerate(episodes):
    mine = np.flatnonzero(rows.sample_id == e)
    assert list(rows.step[mine]) == list(range(len(episode.turns)))
    assert rows.kind[mine[-1]] == RowKind.FINAL_ANSWER
    assert all(rows.kind[i] == RowKind.MEMORY_UPDATE for i in mine[:-1])
    assert rows.group_id[mine[0]] == e // 3
    for i, turn in zip(mine, episode.turns):
      assert rows.prompt_text[i] == turn.prompt
      assert len(rows.completion_tokens[i]) == len(rows.completion_logprobs[i]) <= 10
      # The row's completion decodes to the reply the environment parsed.
      text = tokenizer.decode(rows.completion_tokens[i].tolist(), skip_special_tokens=True)
      assert search_env.cut_after_first_action(text).strip() == turn.response.strip()


def test_sampler_policy_requires_action_stop_strings(tiny_model_dir):
  from memtrain_jax import models
  from memtrain_jax.agent import search_rollout
  from memtrain_jax.sampling.sampler import Sampler, SamplerConfig
  config, params = models.load_pretrained(tiny_model_dir)
  sampler = Sampler(config, models.load_tokenizer(tiny_model_dir), SamplerConfig(max_new_tokens=8))
  with pytest.raises(ValueError, match="stop_strings"):
    search_rollout.SamplerPolicy(sampler, params, max_new_tokens=8)


def test_task_configs_validate_and_reject_recall():
  for name in ("memagent_cpu.py", "mem1_cpu.py"):
    cfg = config_lib.load_config(os.path.join(ROOT, "configs", name))
    config_lib.validate(cfg)
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "memagent_cpu.py"),
                               ["objectives.recall.enabled=true"])
  with pytest.raises(ValueError, match="recall.enabled=False"):
    config_lib.validate(cfg)
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "memagent_cpu.py"),
                               ["objectives.end_to_end.name=masked_reconstruction"])
  with pytest.raises(ValueError, match="qa_final_answer"):
    config_lib.validate(cfg)
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "mem1_cpu.py"),
                               ["rl.packing.seq_len=512"])
  with pytest.raises(ValueError, match="passages"):
    config_lib.validate(cfg)
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "default.py"), ["task.name=qa"])
  with pytest.raises(ValueError, match="long_qa"):
    config_lib.validate(cfg)
