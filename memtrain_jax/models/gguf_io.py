"""GGUF checkpoints (llama.cpp): metadata -> ModelConfig, dequantised tensors -> params.

llama.cpp's converter permutes the rows of Q and K for the Llama architecture (it interleaves the
two rotary halves of each head, for its own RoPE kernel); we undo that so the weights use the
rotate-half layout of `transformers`. Qwen2/Qwen3 files are not permuted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from memtrain_jax.models.config import ModelConfig
from memtrain_jax.models.gguf_file import GGUFFile

_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def gguf_config(file: GGUFFile, path: str, **run_options) -> ModelConfig:
  fields = file.fields
  arch = fields.get("general.architecture")
  if arch not in _FAMILIES:
    raise ValueError(
        f"{path}: GGUF architecture {arch!r} is not supported; supported: {sorted(_FAMILIES)}")
  get = lambda key, default=None: fields.get(f"{arch}.{key}", default)
  tensor_names = {t.name for t in file.tensors}
  if "rope_freqs.weight" in tensor_names:
    raise ValueError(
        f"{path}: this GGUF carries Llama-3.1 rope frequency factors (rope_freqs.weight), which "
        "the GGUF loader does not read; load the model's Hugging Face directory instead")
  num_heads = int(get("attention.head_count"))
  hidden = int(get("embedding_length"))
  head_dim = int(get("attention.key_length") or get("rope.dimension_count") or hidden // num_heads)
  vocab = get("vocab_size")
  if vocab is None:
    vocab = len(fields["tokenizer.ggml.tokens"])
  eos = fields.get("tokenizer.ggml.eos_token_id")
  return ModelConfig(
      family=_FAMILIES[arch],
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(get("feed_forward_length")),
      num_layers=int(get("block_count")),
      num_heads=num_heads,
      num_kv_heads=int(get("attention.head_count_kv", num_heads)),
      head_dim=head_dim,
      rope_theta=float(get("rope.freq_base", 10000.0)),
      rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      tie_embeddings="output.weight" not in tensor_names,
      qkv_bias="blk.0.attn_q.bias" in tensor_names,
      qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
      max_position_embeddings=int(get("context_length", 8192)),
      bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
      eos_token_ids=(int(eos),) if eos is not None else (),
      **run_options,
  )


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head interleave of rotary halves on [out, ...] rows."""
  out = w.shape[0]
  return (w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def load_gguf(path: str, *, mesh=None, rules=None, assemble: Callable, **run_options):
  import gguf  # imported here: only GGUF users need it

  file = GGUFFile(path)
  config = gguf_config(file, path, **run_options)
  tensors = {t.name: t for t in file.tensors}
  d, hd = config.hidden_size, config.head_dim
  h, k = config.num_heads, config.num_kv_heads
  permuted = config.family == "llama"

  def dequant(name):
    if name not in tensors:
      raise ValueError(f"{path}: tensor {name} is missing from the GGUF file")
    t = tensors[name]
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

  def q_or_k(name, heads):
    w = dequant(name)  # [heads * hd, d], HF's [out, in]
    if permuted:
      w = unpermute_rows(w, heads)
    return w.reshape(heads, hd, d)

  def bias(name, heads):
    b = dequant(name)
    if permuted:
      b = unpermute_rows(b, heads)
    return b.reshape(heads, hd)

  def fetch(name, layer):
    blk = f"blk.{layer}."
    if name == "embed":
      return dequant("token_embd.weight")
    if name == "final_norm":
      return dequant("output_norm.weight")
    if name == "lm_head":
      return dequant("output.weight")
    table = {
        "attn_norm": lambda: dequant(blk + "attn_norm.weight"),
        "mlp_norm": lambda: dequant(blk + "ffn_norm.weight"),
        "wq": lambda: q_or_k(blk + "attn_q.weight", h),
        "wk": lambda: q_or_k(blk + "attn_k.weight", k),
        "wv": lambda: dequant(blk + "attn_v.weight").reshape(k, hd, d),
        "wo": lambda: dequant(blk + "attn_output.weight").reshape(d, h, hd),
        "bq": lambda: bias(blk + "attn_q.bias", h),
        "bk": lambda: bias(blk + "attn_k.bias", k),
        "bv": lambda: dequant(blk + "attn_v.bias").reshape(k, hd),
        "q_norm": lambda: dequant(blk + "attn_q_norm.weight"),
        "k_norm": lambda: dequant(blk + "attn_k_norm.weight"),
        "w_gate": lambda: dequant(blk + "ffn_gate.weight"),
        "w_up": lambda: dequant(blk + "ffn_up.weight"),
        "w_down": lambda: dequant(blk + "ffn_down.weight"),
    }
    return table[name]()

  return config, assemble(config, fetch, mesh, rules, path)


def gguf_tokenizer_files(path: str, out_dir: str) -> str:
  """Builds a `transformers` tokenizer directory from a GGUF's metadata, without torch.

  `transformers`' own GGUF route imports torch; here the metadata is read with `gguf` and
  handed to transformers' GGUF tokenizer converter.
  """
  import gguf
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf.gguf_tokenizer_mapping import (
      GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)

  reader = gguf.GGUFReader(path)
  arch = _field(reader, "general.architecture")
  grouped = {}
  for group, renames in GGUF_TOKENIZER_MAPPING.items():
    grouped[group] = {}
    for key, name in renames.items():
      value = _field(reader, f"tokenizer.{key}")
      if value is not None:
        grouped[group][name] = value
  tok_dict, tok_config = grouped["tokenizer"], grouped["tokenizer_config"]
  backend, _ = convert_gguf_tokenizer(arch, tok_dict)
  tokens = tok_dict["tokens"]
  special = {}
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unk_token_id"), ("pad_token", "pad_token_id")):
    if tok_dict.get(key) is not None:
      special[name] = tokens[int(tok_dict[key])]
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=backend, chat_template=tok_config.get("chat_template"), **special)
  if tok_config.get("add_bos_token") is not None:
    tokenizer.add_bos_token = bool(tok_config["add_bos_token"])
  tokenizer.save_pretrained(out_dir)
  return out_dir
