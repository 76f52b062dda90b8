"""The `memtrain` entry point dispatches to every subcommand and rejects unknown ones."""

import importlib

import pytest

from memtrain_jax import cli


def test_every_subcommand_module_has_a_main():
  for name, (module, fn) in cli._COMMANDS.items():
    assert callable(getattr(importlib.import_module(module), fn)), name


def test_unknown_command_fails_with_the_list(capsys):
  assert cli.main(["nope"]) == 2
  assert "choose one of train, eval, data, serve-retrieval, chat" in capsys.readouterr().out


def test_help_exits_zero(capsys):
  assert cli.main(["--help"]) == 0
  assert "memtrain train --config" in capsys.readouterr().out


def test_train_rejects_a_misspelt_override(capsys):
  assert cli.main(["train", "--config", "configs/default.py", "--workdir", "/tmp/unused",
                   "--config.rl.kl_coeff=0"]) == 2
  assert "did you mean 'rl.kl_coef'" in capsys.readouterr().err


def test_train_rejects_stray_arguments():
  with pytest.raises(SystemExit):
    cli.main(["train", "--config", "configs/default.py", "--workdir", "/tmp/unused", "--lr=3"])


def test_library_debug_logs_stay_off_the_console(capsys):
  import logging

  cli.main(["train", "--config", "configs/default.py", "--workdir", "/tmp/unused",
            "--config.rl.kl_coeff=0"])  # sets up logging (root at WARNING), then fails
  # Both users of bm25s: the data pipeline's passage index (the main job) and the search-QA
  # retriever. Importing bm25s sets its logger to DEBUG; indexing logs "Building index ...".
  from memtrain_jax.data.passages import Passage
  from memtrain_jax.data.retrieval import PassageIndex
  PassageIndex([Passage("A", "alpha beta gamma", 0, 0), Passage("B", "beta delta", 1, 0)])
  from memtrain_jax.retrieval import bm25  # noqa: F401
  logging.getLogger("bm25s").debug("Building index from tokens")
  assert "Building index" not in capsys.readouterr().err
  assert logging.getLogger("memtrain").getEffectiveLevel() == logging.INFO
