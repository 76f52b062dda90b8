"""Decoder configuration: one dataclass for Llama, Qwen2/Qwen2.5 and Qwen3.

The three families differ only in a few switches (q/k/v bias, per-head q/k RMSNorm, tied
embeddings, RoPE scaling), so one decoder serves all of them. `from_hf_config` reads a
Hugging Face `config.json` dict; `to_hf_config` writes one back for export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# HF `architectures` value -> our family name.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_FAMILY_TO_ARCH = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
_FAMILY_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype: Any) -> jnp.dtype:
  """Accepts 'float32' / 'bfloat16' / jnp dtypes; returns a numpy dtype."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return jnp.dtype(_DTYPES[dtype])
  return jnp.dtype(dtype)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the decoder, and how to run it."""

  family: str  # "llama" | "qwen2" | "qwen3"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  # None, or a dict in HF form: {"rope_type": "llama3", "factor", "low_freq_factor",
  # "high_freq_factor", "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}.
  rope_scaling: tuple | None = None  # stored as sorted items so the config stays hashable
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  qk_norm: bool = False  # Qwen3
  max_position_embeddings: int = 8192
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  # How to run it (not part of the checkpoint).
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  scan_layers: bool = False  # lax.scan over stacked layers (fast compiles for deep models)
  remat: bool = False  # rematerialise each layer in the backward pass

  def __post_init__(self):
    if self.family not in _FAMILY_TO_ARCH:
      raise ValueError(f"unknown model family {self.family!r}; supported: {sorted(_FAMILY_TO_ARCH)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    resolve_dtype(self.param_dtype)
    resolve_dtype(self.compute_dtype)

  @property
  def rope_scaling_dict(self) -> dict | None:
    return dict(self.rope_scaling) if self.rope_scaling is not None else None

  @property
  def dtype(self) -> jnp.dtype:
    return resolve_dtype(self.compute_dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return resolve_dtype(self.param_dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def _layer_matrix_params(self) -> int:
    """Weights of one layer's projections (q, k, v, o and the three MLP matrices)."""
    d, hd = self.hidden_size, self.head_dim
    return d * hd * (self.num_heads * 2 + self.num_kv_heads * 2) + 3 * d * self.intermediate_size

  def num_params(self) -> int:
    d, hd = self.hidden_size, self.head_dim
    per_layer = self._layer_matrix_params() + 2 * d  # + the two norms
    if self.qkv_bias:
      per_layer += hd * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      per_layer += 2 * hd
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + emb + d

  def flops_per_token(self, context_length: int, *, head: bool = True) -> float:
    """Forward FLOPs per token: 2 per weight multiply-add plus attention scores and values.

    `head=False` leaves out the output projection: a prefill computes logits for each prompt's
    last token only, so its other tokens cost the layers alone.
    """
    matmul_params = self.num_layers * self._layer_matrix_params()
    if head:
      matmul_params += self.vocab_size * self.hidden_size
    attn = 2 * 2 * self.num_layers * self.num_heads * self.head_dim * context_length
    return 2.0 * matmul_params + attn

  @classmethod
  def from_hf_config(cls, hf: dict, **run_options) -> "ModelConfig":
    archs = hf.get("architectures") or []
    family = None
    for arch in archs:
      family = SUPPORTED_ARCHITECTURES.get(arch)
      if family:
        break
    if family is None:
      family = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(hf.get("model_type", ""))
    if family is None:
      raise ValueError(
          f"unsupported architecture {archs or hf.get('model_type')!r}; supported `architectures` "
          f"values are {sorted(SUPPORTED_ARCHITECTURES)}")
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    rope_scaling = hf.get("rope_scaling")
    rope_theta = hf.get("rope_theta")
    # transformers >= 5 folds theta and scaling into `rope_parameters`.
    rope_params = hf.get("rope_parameters")
    if isinstance(rope_params, dict):
      rope_theta = rope_params.get("rope_theta", rope_theta)
      if rope_params.get("rope_type", "default") != "default":
        rope_scaling = rope_params
    if rope_scaling is not None:
      rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
      if rope_type in (None, "default"):
        rope_scaling = None
      elif rope_type not in ("llama3", "linear"):
        raise ValueError(
            f"rope scaling type {rope_type!r} is not supported; supported: 'llama3', 'linear', none")
      else:
        keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        rope_scaling = tuple(sorted(
            [("rope_type", rope_type)] + [(k, rope_scaling[k]) for k in keep if k in rope_scaling]))
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    qkv_bias = family == "qwen2" or bool(hf.get("attention_bias", False))
    return cls(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        qk_norm=family == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        **run_options,
    )

  def to_hf_config(self) -> dict:
    hf = {
        "architectures": [_FAMILY_TO_ARCH[self.family]],
        "model_type": _FAMILY_TO_MODEL_TYPE[self.family],
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_scaling": self.rope_scaling_dict,
        "tie_word_embeddings": self.tie_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "torch_dtype": self.param_dtype,
    }
    if self.family == "llama":
      hf["attention_bias"] = self.qkv_bias
      hf["mlp_bias"] = False
    if self.family == "qwen3":
      hf["attention_bias"] = False
    if self.bos_token_id is not None:
      hf["bos_token_id"] = self.bos_token_id
    if self.eos_token_ids:
      hf["eos_token_id"] = (
          self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids))
    return hf
