"""The decode loop's weights: every matrix a decode step multiplies by, packed once per set of
parameters for the CPU packed-matmul kernel (`kernels.packed_matmul`).

Packing reads and writes every weight once (SmolLM2-135M f32: about 0.23 s on 2 cores, what
the kernel saves over 18 decode steps at 4 rows), so it is done once per parameters, not per
decode loop: a training step's rollouts call the sampler once per chunk with the same parameters.
`PackedWeightsCache` keeps the packed copy while those parameters are alive and packs again when
it is given new ones. The copy costs the float32 size of the matrices in memory (540 MB for
SmolLM2-135M) for as long as it is cached.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import jax

from memtrain_jax.kernels.packed_matmul import PackedWeight, pack
from memtrain_jax.models.config import ModelConfig
from memtrain_jax.models.params import is_stacked, unembedding

# Each layer matrix and the number of its input (contracted) axes, as `models.decoder` applies it.
LAYER_MATRICES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}


def pack_panels(weights: dict, layout: tuple) -> dict:
  """{key: `pack`(weights[key], in_axes, lead_axes)} for each (key, in_axes, lead_axes) of the
  (static) layout: one program packs every matrix."""
  return {key: pack(weights[key], in_axes, lead_axes) for key, in_axes, lead_axes in layout}


def _layers(params: Any) -> list:
  return [params["layers"]] if is_stacked(params) else params["layers"]


def pack_matrices(config: ModelConfig, params: Any, matmul: Callable,
                  packer: Callable = jax.jit(pack_panels, static_argnums=1)
                  ) -> dict[str, PackedWeight]:
  """A `PackedWeight` multiplied by `matmul` (`kernels.packed_matmul.packed_matmul` or a sharded
  wrapper of it) for each layer matrix ("{layer}/{name}"; layer 0 holds stacked layers) and for
  the output projection ("unembedding"). `packer` is `pack_panels` under `jax.jit`."""
  lead_axes = int(is_stacked(params))
  weights, layout, out_shapes = {}, [], {}
  for i, layer in enumerate(_layers(params)):
    for name, in_axes in LAYER_MATRICES.items():
      key, w = f"{i}/{name}", layer[name]
      weights[key] = w
      layout.append((key, in_axes, lead_axes))
      out_shapes[key] = w.shape[lead_axes:w.ndim - in_axes]
  weights["unembedding"] = head = unembedding(config, params)
  layout.append(("unembedding", 1, 0))
  out_shapes["unembedding"] = head.shape[:1]
  panels = packer(weights, tuple(layout))
  return {key: PackedWeight(panels[key], tuple(out_shapes[key]), matmul) for key in panels}


def with_packed(params: Any, packed: dict[str, PackedWeight]) -> Any:
  """`params` with `pack_matrices`' weights in place of the matrices and as "unembedding"
  (`models.params.unembedding`); the embedding table, norms and biases as they are."""
  layers = [{**layer, **{name: packed[f"{i}/{name}"] for name in LAYER_MATRICES}}
            for i, layer in enumerate(_layers(params))]
  return {**params, "layers": layers[0] if is_stacked(params) else layers,
          "unembedding": packed["unembedding"]}


class PackedWeightsCache:
  """`params` with packed matrices (`pack_matrices`, `with_packed`); the packed copy is made once
  for the last parameters given and kept while their arrays are alive.

  Parameters are recognised by identity: the same arrays (jax arrays are immutable) reuse the
  packed copy made for them; new arrays, such as a training step's updated parameters, are packed
  again and replace it. Only weak references to the parameters are kept, so the cache never keeps
  an old version of them alive.
  """

  def __init__(self, config: ModelConfig, matmul: Callable,
               packer: Callable = jax.jit(pack_panels, static_argnums=1)):
    self._config = config
    self._matmul = matmul
    self._packer = packer
    self._leaves: list[weakref.ref] = []
    self._packed: dict[str, PackedWeight] | None = None
    self.packs = 0  # how many times parameters were packed

  def clear(self) -> None:
    """Frees the packed copy (the next call packs again)."""
    self._packed = None
    self._leaves = []

  def __call__(self, params: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(params)
    if (self._packed is None or len(leaves) != len(self._leaves)
        or any(ref() is not leaf for ref, leaf in zip(self._leaves, leaves))):
      self.clear()  # free the old copy before making the new one
      self._packed = pack_matrices(self._config, params, self._matmul, self._packer)
      self._leaves = [weakref.ref(leaf) for leaf in leaves]
      self.packs += 1
    return with_packed(params, self._packed)
