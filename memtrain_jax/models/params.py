"""The parameter pytree: shapes, logical axis names, random init, layer stacking.

Parameters are a plain dict. Every leaf has a tuple of logical axis names (`param_logical_axes`)
that `memtrain_jax.sharding` maps to mesh axes. Layers are stored either as a list of per-layer
dicts (unrolled; fastest decode on XLA:CPU) or as one dict of arrays stacked on a leading 'layers'
axis (`lax.scan`; fast compiles for deep models). `decoder` accepts both.

Weight layouts (output axes first, input axes last, as `transformers` stores them; every
projection contracts x's last axes with w's last axes, see `decoder._dense`):
  embed [vocab, embed]          lm_head [vocab, embed] (absent when tied)
  wq [q_heads, head_dim, embed] wk, wv [kv_heads, head_dim, embed]  wo [embed, q_heads, head_dim]
  bq [q_heads, head_dim]        bk, bv [kv_heads, head_dim]          (Qwen2)
  q_norm, k_norm [head_dim]     (Qwen3)
  w_gate, w_up [mlp, embed]     w_down [embed, mlp]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.models.config import ModelConfig


def layer_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
  """name -> (shape, logical axes) of one decoder layer."""
  d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
  h, k = config.num_heads, config.num_kv_heads
  shapes = {
      "attn_norm": ((d,), ("norm",)),
      "wq": ((h, hd, d), ("q_heads", "head_dim", "embed")),
      "wk": ((k, hd, d), ("kv_heads", "head_dim", "embed")),
      "wv": ((k, hd, d), ("kv_heads", "head_dim", "embed")),
      "wo": ((d, h, hd), ("embed", "q_heads", "head_dim")),
      "mlp_norm": ((d,), ("norm",)),
      "w_gate": ((f, d), ("mlp", "embed")),
      "w_up": ((f, d), ("mlp", "embed")),
      "w_down": ((d, f), ("embed", "mlp")),
  }
  if config.qkv_bias:
    shapes["bq"] = ((h, hd), ("q_heads", "head_dim"))
    shapes["bk"] = ((k, hd), ("kv_heads", "head_dim"))
    shapes["bv"] = ((k, hd), ("kv_heads", "head_dim"))
  if config.qk_norm:
    shapes["q_norm"] = ((hd,), ("norm",))
    shapes["k_norm"] = ((hd,), ("norm",))
  return shapes


def top_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
  d, v = config.hidden_size, config.vocab_size
  shapes = {
      "embed": ((v, d), ("vocab", "embed")),
      "final_norm": ((d,), ("norm",)),
  }
  if not config.tie_embeddings:
    shapes["lm_head"] = ((v, d), ("vocab", "embed"))
  return shapes


def param_logical_axes(config: ModelConfig, stacked: bool | None = None) -> dict:
  """A pytree with the structure of the params whose leaves are tuples of logical axis names."""
  stacked = config.scan_layers if stacked is None else stacked
  axes = {name: ax for name, (_, ax) in top_shapes(config).items()}
  layer = {name: ax for name, (_, ax) in layer_shapes(config).items()}
  if stacked:
    axes["layers"] = {name: ("layers",) + ax for name, ax in layer.items()}
  else:
    axes["layers"] = [dict(layer) for _ in range(config.num_layers)]
  return axes


def param_shapes(config: ModelConfig, stacked: bool | None = None) -> dict:
  """A pytree of `jax.ShapeDtypeStruct` in the parameter dtype."""
  stacked = config.scan_layers if stacked is None else stacked
  dtype = config.weight_dtype
  out = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, _) in top_shapes(config).items()}
  layer = layer_shapes(config)
  if stacked:
    out["layers"] = {
        name: jax.ShapeDtypeStruct((config.num_layers,) + shape, dtype)
        for name, (shape, _) in layer.items()
    }
  else:
    out["layers"] = [
        {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, _) in layer.items()}
        for _ in range(config.num_layers)
    ]
  return out


def init_params(config: ModelConfig, seed: int = 0, scale: float = 0.02) -> dict:
  """Random parameters (normal * scale, norms at 1) for tests and smoke runs, built on the host."""
  rng = np.random.default_rng(seed)
  dtype = config.weight_dtype

  def make(name, shape):
    if name.endswith("norm"):
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(shape), dtype)
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)

  params = {name: make(name, shape) for name, (shape, _) in top_shapes(config).items()}
  layers = [{name: make(name, shape) for name, (shape, _) in layer_shapes(config).items()}
            for _ in range(config.num_layers)]
  params["layers"] = layers
  return stack_layers(params) if config.scan_layers else params


def compute_params(config: ModelConfig, params: dict) -> dict:
  """The weight matrices in the compute dtype, where the parameters are wider (f32 master
  weights, bf16 compute): the copy the rollouts sample from.

  The forward casts every matrix to the compute dtype where it uses it, so its outputs are
  bit-identical with this copy; but a decode loop would re-read the f32 weights (twice the bytes)
  and cast them at every token. Vectors (norm scales, biases) keep their dtype, as the forward
  reads them in f32 anyway.
  """
  target = config.dtype

  def cast(p):
    narrower = (jnp.issubdtype(p.dtype, jnp.floating)
                and jnp.finfo(p.dtype).bits > jnp.finfo(target).bits)
    return p.astype(target) if narrower and p.ndim >= 2 else p

  return jax.tree.map(cast, params)


def is_stacked(params: dict) -> bool:
  return isinstance(params["layers"], dict)


def stack_layers(params: dict) -> dict:
  """List of per-layer dicts -> one dict of arrays with a leading layers axis."""
  if is_stacked(params):
    return params
  out = dict(params)
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *params["layers"])
  return out


def unstack_layers(params: dict) -> dict:
  if not is_stacked(params):
    return params
  out = dict(params)
  layers = params["layers"]
  n = next(iter(layers.values())).shape[0]
  out["layers"] = [{k: v[i] for k, v in layers.items()} for i in range(n)]
  return out


def unembedding(config: ModelConfig, params: dict) -> jax.Array:
  """The [vocab, embed] output projection (the embedding itself when tied), or a decode loop's
  packed copy of it (`sampling.decode_weights`)."""
  if "unembedding" in params:
    return params["unembedding"]
  return params["embed"] if config.tie_embeddings else params["lm_head"]
