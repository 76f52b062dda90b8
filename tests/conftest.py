"""Test-wide setup: 8 virtual CPU devices and fast compiles (`tests/xla_flags.py`), a persistent
compile cache, shared fixtures.

XLA_FLAGS must be set before jax initialises its backends, so this runs at import time.
"""

import os

from tests.xla_flags import flags_for_tests

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = flags_for_tests(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  config.addinivalue_line("markers", "real_model: uses the real SmolLM2-135M (slower)")


# The README's test command runs two workers that each take the next whole file when done with one
# (`-n 2 --dist loadfile --no-loadscope-reorder`). These files take longest (1-3 minutes each under
# two workers on 2 cores, longest first, from `--durations`), so they are handed out first: handed
# out last, one of them would run alone while the other worker sat idle.
_LONGEST_FILES = ("multihost/test_multiprocess_train.py", "train/test_train_loop.py",
                  "models/test_parity.py", "evaluation/test_eval_multiprocess.py",
                  "sampling/test_sampler_smollm2.py", "train/test_task_rl.py",
                  "train/test_train_step.py", "train/test_checkpoint_resume.py",
                  "sampling/test_sampler_tiny.py", "models/test_smollm2_gguf.py",
                  "kernels/test_cpu_library.py")
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
  def order(item):
    path = os.path.relpath(str(item.path), _TESTS_DIR).replace(os.sep, "/")
    return _LONGEST_FILES.index(path) if path in _LONGEST_FILES else len(_LONGEST_FILES)
  items.sort(key=order)  # stable: the other files keep their order, and every file its tests'


@pytest.fixture(scope="session")
def bundled_model_path():
  from memtrain_jax.models import bundled_gguf_path
  return bundled_gguf_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_path):
  """A tiny random Llama saved as an HF directory with SmolLM2's real tokenizer and chat template.

  Prompts, chat template and stop token are real; the weights are random, so the model's answers
  (and the rewards) are whatever chance gives.
  """
  from memtrain_jax import models
  tokenizer = models.load_tokenizer(bundled_model_path)
  config = models.ModelConfig(family="llama", vocab_size=len(tokenizer), hidden_size=32,
                              intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=8, rope_theta=10000.0, tie_embeddings=True,
                              bos_token_id=tokenizer.bos_token_id, eos_token_ids=(2,))
  out = str(tmp_path_factory.mktemp("tiny_llama"))
  models.save_pretrained(config, models.init_params(config, seed=0, scale=0.05), tokenizer, out)
  return out
