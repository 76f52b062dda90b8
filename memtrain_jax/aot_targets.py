"""Data for `memtrain compile` (`memtrain_jax.aot`): the accelerator targets and known models.

Targets. A TPU slice is described to libtpu by its topology (MaxText's accelerator table;
`../shared/docs/accelerators.md`); 8 or 32 H100s by a GPU target config (the facts XLA's GPU
compiler needs about the device, as `xla/tools/hlo_opt/gpu_specs/*.txtpb` writes them) and a
"slices x hosts x devices" topology. Per chip: the HBM the compiler has (libtpu's figures, read
from its out-of-memory messages on this machine: v5p 95.74G, v4 30.75G, v5e 15.75G, v6e 31.25G;
H100 80GB HBM3: 84,929,347,584 bytes), and the peak dense bf16 matmul rate and HBM bandwidth that
the step-time projection uses (vendor figures: TPU v5p 459 TFLOP/s and 2,765 GB/s, v4 275 and
1,228, v5e 197 and 819, v6e 918 and 1,640; H100 SXM 989 TFLOP/s dense and 3,352 GB/s).

Models. The paper configs name a local Hugging Face directory that is not here; compiling needs
only the architecture, so the public `config.json` values of the paper's backbones are kept here
(`MODEL_PRESETS`), turned into a `ModelConfig` by the same `ModelConfig.from_hf_config` the loader
uses.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Target:
  """One accelerator slice to compile for."""
  name: str
  platform: str  # "tpu" | "cuda"
  chips: int  # devices in the mesh (a v4 / v5p chip is one megacore device)
  hbm_bytes: int  # per chip, as the compiler sees it
  peak_flops: float  # per chip, dense bf16 matmul FLOP/s
  hbm_bandwidth: float  # per chip, bytes/s
  description: str
  topology_name: str = ""  # TPU: libtpu's "v5:2x2x2" form
  chip_config_name: str = "default"
  wrap: tuple[bool, bool, bool] = (False, False, False)
  gpu_topology: str = ""  # GPU: "slices x hosts x devices per host"

  @property
  def kind(self) -> str:
    return self.name.split("-")[0] if self.platform == "tpu" else "h100"


_V5P = dict(platform="tpu", hbm_bytes=int(95.74 * GIB), peak_flops=459e12, hbm_bandwidth=2765e9,
            chip_config_name="megacore")
_V4 = dict(platform="tpu", hbm_bytes=int(30.75 * GIB), peak_flops=275e12, hbm_bandwidth=1228e9,
           chip_config_name="megacore")
_V5E = dict(platform="tpu", hbm_bytes=int(15.75 * GIB), peak_flops=197e12, hbm_bandwidth=819e9)
_V6E = dict(platform="tpu", hbm_bytes=int(31.25 * GIB), peak_flops=918e12, hbm_bandwidth=1640e9)
H100_HBM_BYTES = 84_929_347_584
_H100 = dict(platform="cuda", hbm_bytes=H100_HBM_BYTES, peak_flops=989e12, hbm_bandwidth=3352e9)

TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("v5p-8", chips=4, topology_name="v5:2x2x1", description="TPU v5p-8 (4 chips)", **_V5P),
    Target("v5p-16", chips=8, topology_name="v5:2x2x2", description="TPU v5p-16 (8 chips)",
           **_V5P),
    Target("v5p-32", chips=16, topology_name="v5:2x2x4", description="TPU v5p-32 (16 chips)",
           **_V5P),
    Target("v5p-64", chips=32, topology_name="v5:2x4x4", description="TPU v5p-64 (32 chips)",
           **_V5P),
    Target("v5p-128", chips=64, topology_name="v5:4x4x4", wrap=(True, True, True),
           description="TPU v5p-128 (64 chips)", **_V5P),
    Target("v4-32", chips=16, topology_name="v4:2x2x4", description="TPU v4-32 (16 chips)", **_V4),
    Target("v5e-16", chips=16, topology_name="v5e:4x4", description="TPU v5e-16 (16 chips)",
           **_V5E),
    Target("v5e-256", chips=256, topology_name="v5e:16x16", wrap=(True, True, False),
           description="TPU v5e-256 (256 chips)", **_V5E),
    Target("v6e-16", chips=16, topology_name="v6e:4x4", description="TPU v6e-16 (16 chips)",
           **_V6E),
    Target("h100x1", chips=1, gpu_topology="1x1x1", description="1 x H100 80GB HBM3", **_H100),
    Target("h100x8", chips=8, gpu_topology="1x1x8", description="8 x H100 80GB HBM3 (one host)",
           **_H100),
    Target("h100x16", chips=16, gpu_topology="1x2x8",
           description="16 x H100 80GB HBM3 (2 hosts x 8)", **_H100),
    Target("h100x32", chips=32, gpu_topology="1x4x8",
           description="32 x H100 80GB HBM3 (4 hosts x 8)", **_H100),
]}

# XLA's GPU target config for an H100 80GB HBM3 (SXM): the GpuTargetConfigProto text that
# `jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)` takes, in
# the form of XLA's `gpu_specs/*.txtpb`. 132 SMs of compute capability 9.0 at 1.98 GHz, 128 FP32
# lanes per SM, 3.352 TB/s, 50 MiB of L2, 228 KiB of shared memory per SM (227 KiB opt-in per
# block), 84,929,347,584 bytes of device memory, cuDNN 9.
H100_TARGET_CONFIG = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352000000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 1 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


# Public config.json values (the fields `ModelConfig.from_hf_config` reads).
MODEL_PRESETS: dict[str, dict] = {
    # huggingface.co/Qwen/Qwen3-4B-Instruct-2507/blob/main/config.json
    "Qwen3-4B-Instruct-2507": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
        "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "rope_theta": 5000000, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "attention_bias": False, "max_position_embeddings": 262144, "bos_token_id": 151643,
        "eos_token_id": 151645},
    # huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json
    "Qwen2.5-7B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "bos_token_id": 151643, "eos_token_id": 151645},
    # huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json (the bundled model)
    "SmolLM2-135M-Instruct": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "rope_theta": 100000, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2},
    # A tiny random Llama for tests (tests/rollout_fixtures.tiny_config's shape, 512 tokens).
    "tiny": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "max_position_embeddings": 65536, "eos_token_id": 2},
}

# Normalised name fragments that identify a preset inside a model path, longest first (a run's
# export such as runs/memtrain_qwen3_4b/hf names its backbone only this way).
_ALIASES = (
    ("qwen34binstruct2507", "Qwen3-4B-Instruct-2507"),
    ("qwen257binstruct", "Qwen2.5-7B-Instruct"),
    ("smollm2135m", "SmolLM2-135M-Instruct"),
    ("qwen34b", "Qwen3-4B-Instruct-2507"),
    ("qwen257b", "Qwen2.5-7B-Instruct"),
)


def _normalise(text: str) -> str:
  return re.sub(r"[^a-z0-9]", "", text.lower())


def preset_for_path(path: str) -> str | None:
  """The preset a model path names (its file or directory names), or None."""
  norm = _normalise(path)
  for name in MODEL_PRESETS:
    if _normalise(name) == norm or norm.endswith(_normalise(name)):
      return name
  if norm == "bundledsmollm2135minstruct":
    return "SmolLM2-135M-Instruct"
  for fragment, name in _ALIASES:
    if fragment in norm:
      return name
  return None


def find_preset(name: str) -> str:
  """The preset called `name` (case and punctuation ignored); ValueError listing them if none."""
  for preset in MODEL_PRESETS:
    if _normalise(preset) == _normalise(name):
      return preset
  found = preset_for_path(name)
  if found is not None:
    return found
  raise ValueError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")


def find_target(name: str) -> Target:
  key = name.strip().lower()
  if key not in TARGETS:
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
  return TARGETS[key]
