"""`memtrain compile` (`memtrain_jax.aot`): every program of a training step compiled ahead of time
for a TPU slice and for 8 H100s on this CPU machine, and a config too big for its target refused.

The compile tests need libtpu (`jax[tpu]`) and the CUDA plugin (`jax-cuda12-plugin`) at the
project's jax version, the test extra's additions; without them they are skipped. The planning
tests run on the CPU devices alone.
"""

import importlib.util
import os

import pytest

from memtrain_jax import aot, aot_targets, config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "train", "tiny_loop_config.py") + ":tiny"
# The tiny train-loop config, with 128-token lines (one attention block: quick compiles), bf16
# compute over f32 weights (so the rollout copy is a program), scanned and rematerialised layers
# as the paper configs run them, and 8 lines per micro-batch (a multiple of 4 and 8 chips).
TINY_OVERRIDES = ("--config.rl.packing.micro_batch_size=8", "--config.agent.prompt_max_tokens=48",
                  "--config.data.chunking.chunk_size=64", "--config.data.assembly.max_tokens=190",
                  "--config.rl.packing.seq_len=128", "--config.sampling.prompt_buckets=(64,128)",
                  "--config.model.compute_dtype=bfloat16", "--config.model.scan_layers=true",
                  "--config.model.remat=true")
PROGRAMS = {"rollout copy", "prefill", "decode", "reference log-probs", "train step"}


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


needs_libtpu = pytest.mark.skipif(
    not _installed("libtpu"),
    reason="needs libtpu to compile for TPU: pip install 'jax[tpu]==<jax version>' (test extra)")
needs_cuda_plugin = pytest.mark.skipif(
    not _installed("jax_cuda12_plugin"),
    reason="needs the CUDA plugin to compile for H100: pip install 'jax-cuda12-plugin==<jax "
           "version>' (test extra)")


def tiny_config(*extra):
  return config_lib.load_config(TINY, TINY_OVERRIDES + extra)


def _check_tiny_report(report, chips):
  assert report.fits, report.failure_message()
  assert {p.name for p in report.programs} == PROGRAMS
  for p in report.programs:
    assert not p.error, (p.name, p.error)
    assert p.arguments > 0 and p.program_total > 0 and p.temporaries >= 0, p
    assert p.hbm == report.target.hbm_bytes and 0 < p.peak < p.hbm
  assert report.mesh == {"data": 1, "fsdp": chips, "tensor": 1}
  # The train state and the reference weights stay on the chips during rollouts.
  prefill = next(p for p in report.programs if p.name == "prefill")
  assert prefill.resident > 0 and "train state" in prefill.resident_note
  # The sampler resolved its kernels for the target, not for this CPU: XLA's attention and
  # matmuls, and a bf16 cache (XLA:CPU would have been given an f32 one).
  assert report.notes["decode_attention"] == "XLA" and report.notes["decode_matmul"] == "XLA"
  assert report.notes["cache_dtype"] == "bfloat16"
  text = report.to_markdown()
  for name in PROGRAMS:
    assert f"| {name} |" in text
  assert report.projection.rollout_flops > 0 and report.projection.update_flops > 0
  assert report.projection.step_seconds > 0


@needs_libtpu
def test_tiny_config_compiles_every_program_for_v5p_8():
  _check_tiny_report(aot.compile_config(tiny_config(), "v5p-8", config_name="tiny"), chips=4)


@needs_cuda_plugin
def test_tiny_config_compiles_every_program_for_8_h100s():
  report = aot.compile_config(tiny_config(), "h100x8", config_name="tiny")
  _check_tiny_report(report, chips=8)
  assert report.target.hbm_bytes == 84_929_347_584


@needs_libtpu
def test_an_oversized_config_is_refused_naming_the_program_and_the_figure():
  # Qwen2.5-7B on 16 v5e chips: its bf16 rollout copy (15.2 GB, whole on every chip under the
  # rollout rules) does not fit a chip's 15.75 GiB beside the sharded train state.
  cfg = tiny_config("--config.rl.packing.micro_batch_size=16")  # 16 chips
  with pytest.raises(aot.DoesNotFitError) as caught:
    aot.check_fit(cfg, "v5e-16", model_preset="Qwen2.5-7B-Instruct", config_name="oversized")
  message = str(caught.value)
  assert "oversized on v5e-16: rollout copy" in message
  assert "GiB per chip" in message and "15.75 GiB of HBM" in message
  failed = caught.value.report.failures()[0]
  assert failed.name == "rollout copy" and failed.peak > failed.hbm
  # Stops at the first program that does not fit: nothing after it was compiled.
  assert caught.value.report.programs[-1] is failed


@needs_libtpu
def test_the_command_exits_1_and_says_what_does_not_fit(capsys, tmp_path):
  from memtrain_jax import cli
  out = tmp_path / "aot.md"
  code = cli.main(["compile", "--config", TINY, "--target", "v5e-16", "--model_preset",
                   "qwen2.5-7b-instruct", "--fail_fast", "--out", str(out), *TINY_OVERRIDES,
                   "--config.rl.packing.micro_batch_size=16"])
  assert code == 1
  err = capsys.readouterr().err
  assert "DOES NOT FIT" in err and "rollout copy" in err and "15.75 GiB of HBM" in err
  assert "| rollout copy |" in out.read_text()


# ----------------------------------------------------------------------------------------------
# Planning, on the CPU devices (no libtpu needed).


def test_paper_model_paths_name_their_presets():
  find = aot_targets.preset_for_path
  assert find("~/models/Qwen3-4B-Instruct-2507") == "Qwen3-4B-Instruct-2507"
  assert find("~/models/Qwen2.5-7B-Instruct") == "Qwen2.5-7B-Instruct"
  assert find("/path/to/runs/memtrain_qwen2_5_7b/hf") == "Qwen2.5-7B-Instruct"
  assert find("gs://bucket/memtrain_4b/hf") is None
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/paper/memtrain_qwen2_5_7b.py"))
  model, source = aot.model_config_for(cfg)
  assert (model.family, model.num_layers, model.num_kv_heads, model.tie_embeddings) == (
      "qwen2", 28, 4, False)
  assert round(model.num_params() / 1e9, 2) == 7.62 and "Qwen2.5-7B-Instruct" in source
  assert model.compute_dtype == "bfloat16" and model.scan_layers and model.remat
  qwen3, _ = aot.model_config_for(cfg, "Qwen3-4B-Instruct-2507")
  assert round(qwen3.num_params() / 1e9, 2) == 4.02 and qwen3.qk_norm and qwen3.tie_embeddings


def test_paper_step_plans_the_worst_case_rollout_and_update_shapes():
  import jax
  from memtrain_jax import sharding as shd
  from memtrain_jax.sampling.sampler import Sampler
  from memtrain_jax.train import sampler_config
  cfg = config_lib.load_config(os.path.join(ROOT, "configs/paper/memtrain_qwen3_4b.py"))
  model, _ = aot.model_config_for(cfg)
  mesh = shd.make_mesh(cfg.mesh.shape, devices=jax.devices()[:8])
  sampler = Sampler(model, aot.ShapeOnlyTokenizer(model.vocab_size), sampler_config(cfg),
                    mesh=mesh)
  plans = dict((call.name, shapes) for call, shapes in
               aot.plan_rollout_shapes(aot.rollout_calls(cfg), sampler))
  S = aot.SamplerShape
  # 32 documents x G1 = 8 at the longest prompt (1024 + 1024 + 5120 tokens, bucket 8192).
  assert plans["memory update, chunk 1"] == [S(32, 8192, 256, 9216)]
  assert plans["memory update, chunks 2+"] == [S(256, 8192, 256, 9216)]
  assert plans["final answer"] == [S(256, 2048, 256, 3072)]
  # 256 probes x G2 = 8 answers: eight micro-batches of 32 prompts x 8 samples.
  assert plans["recall probes"] == [S(32, 8192, 256, 9216)] * 8
  shape = aot.update_shape(cfg, model.vocab_size)
  assert (shape.micro_batch, shape.seq_len, shape.updates) == (8, 8192, 4)
  assert shape.num_micro % 4 == 0 and shape.rows == 32 * 8 * (8 + 1) + 32 * 8 * 8
  assert shape.loss_tokens == shape.rows * 1024
