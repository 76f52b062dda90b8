"""Every config under configs/ loads, validates and is locked; overrides are typed and checked."""

import glob
import os

import ml_collections
import pytest

from memtrain_jax import config_lib
from memtrain_jax.rl.loss import LossConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Training configs; configs/eval/ holds `memtrain eval` configs (their own schema and tests).
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
                 if os.sep + "eval" + os.sep not in p)
PAPER_4B = os.path.join(REPO, "configs", "paper", "memtrain_qwen3_4b.py")


def test_the_expected_configs_exist():
  names = {os.path.relpath(p, REPO) for p in CONFIGS}
  assert {"configs/default.py", "configs/paper/memtrain_qwen3_4b.py",
          "configs/paper/memtrain_qwen2_5_7b.py", "configs/paper/ablation_end_to_end.py",
          "configs/paper/ablation_decoupled.py", "configs/memagent_cpu.py", "configs/mem1_cpu.py",
          "configs/paper/memagent_qwen3_4b.py", "configs/paper/memagent_qwen2_5_7b.py",
          "configs/paper/mem1_qwen3_4b.py", "configs/paper/mem1_qwen2_5_7b.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_loads_validates_and_is_locked(path):
  cfg = config_lib.load_config(path)
  config_lib.validate(cfg)
  assert cfg.is_locked
  # The same sections and fields as the schema: a config may change values, never add keys.
  assert _keys(cfg) == _keys(config_lib.base_config())
  with pytest.raises(ValueError, match=r"unknown config field 'rl.kl_coeff'; did you mean 'rl.kl_coef'"):
    config_lib.load_config(path, ["--config.rl.kl_coeff=0"])
  with pytest.raises(AttributeError):
    cfg.rl.kl_coeff = 0.0  # lock_config: direct assignment of a new key fails too
  # The docstring records the command, the hardware and the expected result.
  doc = _module_doc(path)
  for word in ("Command", "Hardware", "Expected result"):
    assert word in doc, f"{path}: docstring lacks {word!r}"
  # The typed views the trainer builds from it.
  assert isinstance(config_lib.loss_config(cfg), LossConfig)
  config_lib.advantage_config(cfg)
  config_lib.packing_config(cfg)


def _keys(cfg, prefix=""):
  out = set()
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict):
      out |= _keys(value, prefix + key + ".")
    else:
      out.add(prefix + key)
  return out


def _module_doc(path):
  import ast
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read())) or ""


def test_paper_config_has_the_paper_values():
  cfg = config_lib.load_config(PAPER_4B)
  assert cfg.train.batch_documents == 32 and cfg.train.num_steps == 300
  assert cfg.objectives.end_to_end.num_rollouts == 8 and cfg.objectives.recall.num_samples == 8
  assert cfg.optim.lr == 1e-6 and cfg.objectives.recall.lam == 0.5 and cfg.rl.kl_coef == 1e-3
  assert cfg.data.chunking.chunk_size == 5120 and cfg.data.chunking.max_chunks == 8
  assert cfg.agent.memory_max_tokens == 1024 and cfg.model.compute_dtype == "bfloat16"


def test_ablations_switch_one_thing():
  full = config_lib.load_config(PAPER_4B).to_dict()
  e2e = config_lib.load_config(os.path.join(REPO, "configs/paper/ablation_end_to_end.py")).to_dict()
  decoupled = config_lib.load_config(os.path.join(REPO, "configs/paper/ablation_decoupled.py")).to_dict()
  assert e2e["objectives"]["recall"]["enabled"] is False
  assert decoupled["objectives"]["recall"]["lam"] == 0.0
  e2e["objectives"]["recall"]["enabled"] = True
  decoupled["objectives"]["recall"]["lam"] = 0.5
  assert e2e == full and decoupled == full


def test_overrides_parse_into_the_field_types():
  path = os.path.join(REPO, "configs", "default.py")
  cfg = config_lib.load_config(path, [
      "--config.rl.kl_coef=0", "config.optim.lr=3e-6", "train.num_steps=7",
      "--config.model.remat=true", "--config.mesh.shape=(2,-1,1)", "--config.model.path=/m/q",
      "--config.data.entities.allowed_types=('PERSON','GPE')"])
  assert cfg.rl.kl_coef == 0.0 and isinstance(cfg.rl.kl_coef, float)
  assert cfg.optim.lr == 3e-6 and cfg.train.num_steps == 7 and cfg.model.remat is True
  assert cfg.mesh.shape == (2, -1, 1) and cfg.model.path == "/m/q"
  assert cfg.data.entities.allowed_types == ("PERSON", "GPE")
  assert config_lib.loss_config(cfg).kl_coef == 0.0


@pytest.mark.parametrize("override, message", [
    ("--config.train.num_steps=abc", "train.num_steps"),
    ("--config.train.num_steps=1.5", "parses as float"),
    ("--config.model.remat=maybe", "is a bool"),
    ("--config.rl=0", "is a section"),
    ("--config.optimm.lr=1", "did you mean 'optim'"),
    ("--config.optim.lr", "not of the form"),
])
def test_bad_overrides_fail_clearly(override, message):
  with pytest.raises(ValueError, match=message):
    config_lib.load_config(os.path.join(REPO, "configs", "default.py"), [override])


def test_validate_rejects_an_unknown_cache_dtype():
  cfg = config_lib.load_config(os.path.join(REPO, "configs", "default.py"),
                               ["--config.sampling.cache_dtype=int8"])
  with pytest.raises(ValueError, match="sampling.cache_dtype='int8'; use one of 'auto'"):
    config_lib.validate(cfg)


@pytest.mark.parametrize("field", ["decode_attention", "decode_matmul", "prefill_matmul"])
def test_validate_rejects_an_unknown_kernel_setting(field):
  cfg = config_lib.load_config(os.path.join(REPO, "configs", "default.py"),
                               [f"--config.sampling.{field}=fast"])
  with pytest.raises(ValueError, match=f"sampling.{field}='fast'; use one of 'auto'"):
    config_lib.validate(cfg)


def test_the_sampler_gets_the_sampling_settings():
  """Training's and evaluation's `SamplerConfig`s carry every setting `sampler_settings` names."""
  from memtrain_jax import train
  from memtrain_jax.evaluation import config as eval_config_lib, runner
  settings = dict(cache_dtype="float32", decode_attention="xla", decode_matmul="kernel",
                  prefill_matmul="xla", decode_step_tokens=7)
  assert set(config_lib.sampler_settings(config_lib.base_config().sampling)) == set(settings)
  cfg = config_lib.load_config(os.path.join(REPO, "configs", "default.py"),
                               [f"--config.sampling.{k}={v}" for k, v in settings.items()])
  eval_cfg = eval_config_lib.eval_config()
  eval_cfg.sampling.update(settings)
  for sampler_config in (train.sampler_config(cfg), runner.long_qa_sampler_config(eval_cfg),
                         runner.search_sampler_config(eval_cfg)):
    assert {k: getattr(sampler_config, k) for k in settings} == settings


def test_validate_rejects_a_negative_decode_step_cost():
  cfg = config_lib.load_config(os.path.join(REPO, "configs", "default.py"),
                               ["--config.sampling.decode_step_tokens=-1"])
  with pytest.raises(ValueError, match=r"sampling.decode_step_tokens=-1: .* >= 0"):
    config_lib.validate(cfg)


def test_validate_rejects_a_packing_length_shorter_than_a_row():
  cfg = config_lib.load_config(PAPER_4B, ["--config.rl.packing.seq_len=4096"])
  with pytest.raises(ValueError, match="rl.packing.seq_len=4096 is shorter than the longest row"):
    config_lib.validate(cfg)
