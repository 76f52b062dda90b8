"""Eval configs: the shipped files load, bad fields fail with errors naming the field and the fix,
and cell fingerprints change only with the settings that decide a cell."""

import os

import pytest

from memtrain_jax import config_lib
from memtrain_jax.evaluation import cli
from memtrain_jax.evaluation import config as eval_config_lib
from memtrain_jax.evaluation import runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL_CONFIGS = os.path.join(ROOT, "configs", "eval")


def _cfg(**fields):
  cfg = eval_config_lib.eval_config()
  for key, value in fields.items():
    section, _, leaf = key.rpartition("__")
    (cfg[section] if section else cfg)[leaf] = value
  return cfg


def _error(cfg, check_paths=True) -> str:
  with pytest.raises(ValueError) as info:
    eval_config_lib.validate_eval_config(cfg, check_paths=check_paths)
  return str(info.value)


def test_defaults_and_cpu_chain_validate():
  eval_config_lib.validate_eval_config(_cfg())
  eval_config_lib.validate_eval_config(
      config_lib.load_config(os.path.join(EVAL_CONFIGS, "cpu_chain.py")))


@pytest.mark.parametrize("name", ["paper_table1.py", "paper_table2.py"])
def test_paper_configs_load_and_ask_for_their_paths(name):
  cfg = config_lib.load_config(os.path.join(EVAL_CONFIGS, name))
  eval_config_lib.validate_eval_config(cfg, check_paths=False)
  message = _error(cfg)
  assert "models[0]" in message and "does not exist" in message and "--config.models" in message


def test_unknown_model_path():
  message = _error(_cfg(models=("base=bundled:smollm2-135m-instruct", "memtrain=/no/such/hf")))
  assert "models[1] (memtrain=/no/such/hf)" in message and "does not exist" in message


def test_empty_models():
  assert "models is empty" in _error(_cfg(models=()))


@pytest.mark.parametrize("models, expected", [
    (("bundled:smollm2-135m-instruct",), "is not of the form 'name=value'"),
    (("=bundled:smollm2-135m-instruct",), "is not of the form 'name=value'"),
    (("base=",), "is not of the form 'name=value'"),
    (("my model=bundled:smollm2-135m-instruct",), "may only hold letters"),
    (("a=bundled:smollm2-135m-instruct", "a=bundled:smollm2-135m-instruct"), "appears twice"),
])
def test_bad_name_path_syntax(models, expected):
  message = _error(_cfg(models=models))
  assert expected in message and "models" in message


@pytest.mark.parametrize("lengths", [(512, 0), (-1,), (512.5,)])
def test_lengths_must_be_positive_integers(lengths):
  assert "long_qa.lengths must hold integers > 0" in _error(_cfg(long_qa__lengths=lengths))


def test_exactly_one_of_lengths_and_num_docs():
  assert "set exactly one of long_qa.lengths" in _error(_cfg(long_qa__num_docs=(50,)))
  assert "set exactly one of long_qa.lengths" in _error(_cfg(long_qa__lengths=()))


def test_memagent_files_need_num_docs_and_must_exist(tmp_path):
  pattern = str(tmp_path / "eval_{num_docs}.json")
  assert "set long_qa.num_docs" in _error(_cfg(long_qa__source=pattern))
  message = _error(_cfg(long_qa__source=pattern, long_qa__lengths=(), long_qa__num_docs=(50,)))
  assert "eval_50.json" in message and "does not exist" in message


def test_other_fields_name_themselves():
  assert "long_qa.length_labels has 1 labels for 3 lengths" in _error(
      _cfg(long_qa__length_labels=("7K",)))
  assert "long_qa.modes" in _error(_cfg(long_qa__modes=("rag",)))
  assert "search_qa.datasets[0] (nq)" in _error(_cfg(search_qa__datasets=("nq=/no/nq.jsonl",)))
  assert "search_qa.question_count=1 makes no task of 2" in _error(_cfg(search_qa__question_count=1))
  assert "mode 'table'" in _error(_cfg(report__row_names=("base:table=X",)))
  assert "select none of the models" in _error(
      _cfg(long_qa__models=("nobody",), search_qa__models=("nobody",)))
  assert "both tasks are disabled" in _error(
      _cfg(long_qa__enabled=False, search_qa__enabled=False))


def test_cli_reports_a_bad_config(capsys, tmp_path):
  code = cli.main(["--config", os.path.join(EVAL_CONFIGS, "cpu_chain.py"),
                   "--workdir", str(tmp_path), "--config.long_qa.lengths=(512,-2)"])
  assert code == 2
  assert "memtrain eval: bad config: long_qa.lengths must hold" in capsys.readouterr().err
  assert not os.listdir(tmp_path)  # nothing is written for a config that cannot run


def test_cli_rejects_stray_arguments(tmp_path):
  with pytest.raises(SystemExit):
    cli.main(["--config", os.path.join(EVAL_CONFIGS, "cpu_chain.py"), "--workdir",
              str(tmp_path), "--lengths=3"])


def test_fingerprints_follow_only_what_decides_a_cell():
  base = {s.key: s.fingerprint for s in runner.plan_cells(_cfg())}
  memory = {s.key: s.fingerprint for s in runner.plan_cells(_cfg(agent__memory_max_tokens=7))}
  changed = {k for k in base if base[k] != memory[k]}
  assert changed == {k for k in base if "memory_agent" in k}
  # Adding a length adds its cells and leaves the others as they were.
  longer = {s.key: s.fingerprint for s in runner.plan_cells(_cfg(long_qa__lengths=(512, 1024,
                                                                                   2048, 4096)))}
  assert set(longer) - set(base) == {"long_qa__base__memory_agent__tokens4096",
                                     "long_qa__base__full_context__tokens4096"}
  assert all(longer[k] == v for k, v in base.items())


def test_negative_decode_step_cost():
  assert "sampling.decode_step_tokens=-5" in _error(_cfg(sampling__decode_step_tokens=-5))
