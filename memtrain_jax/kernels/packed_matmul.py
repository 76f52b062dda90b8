"""Sampler matmuls against weights packed once in column panels: a CPU kernel (XLA FFI).

A decode step multiplies a few rows (the batch) by every weight matrix of the model once, so it
is bound by reading the weights. XLA:CPU's matmul repacks the weight operand on every call, so a
step reads and writes each weight about twice. `pack` lays a weight out once as the kernel reads
it (`packed_matmul_cpu.cc`: panels of two native vectors' worth of output columns, k-major: 32
with AVX-512, 16 with AVX2, `panel_width`), and the sampler packs the weights once per set of
parameters, for all the decode loops that use them (`sampling.decode_weights`). SmolLM2-135M's
decode matmuls, 30 layers and the output projection on 2 cores, f32 (`experiments/bench_rollout.py`
(2)): on an Intel Xeon (AVX-512) 20 ms against XLA's 29 ms at 4 rows, 41 against 55 ms at 32, 63
against 76 at 64, and the same (20 against 20 ms) at 1 row; on an AMD EPYC (Zen 3, AVX2; a
noisier machine: ranges over one day's runs) 20-22 against 43-60 ms at 4 rows, 67-105 against
104-144 at 32, 109-140 against 150-209 at 64, 19-22 against 18-25 at 1 row.
The blocking follows the registers (`cpu_vectors.h`): the AVX-512 blocking compiled for AVX2
spilled its sums and took 2310 ms at 32 rows.

Prefill multiplies thousands of rows by the same packed weights (`SamplerConfig.prefill_matmul`):
the kernel cuts them into chunks of rows that stay in L2 while a chunk runs through all the
panels. SmolLM2 prefill on the AVX2 EPYC, same process, alternating: 32 x 128 tokens 7.6 against
8.9 s with XLA's matmuls, 4 x 512 3.5 against 4.0 s, 4 x 1024 8.5 against 8.9 s (attention takes
more of it).

Tried and dropped: 12-wide panels with x transposed into 16-row vectors, each weight broadcast
against them, so that 32 rows take one pass over a panel (16 flops per weight byte against the
12-row block's 6). It took the matmuls alone at 32 rows from 38 to 35.6 ms but left the decode
step unchanged (62.6 against 62.8 ms, same-run A/B; a profile gives both kernels ~40 ms of the
step): within a step, after attention has streamed the K/V cache, both wait on memory.

`PackedWeight` stands in for a weight in the params pytree: `models.decoder` multiplies by it with
the kernel instead of XLA's matmul. Float32 only: bf16 matmuls take XLA:CPU's fast path (AMX /
AVX512-BF16) already. The kernel is built with the other CPU kernels (`kernels.cpu_library`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from memtrain_jax.kernels import cpu_library

TARGET_NAME = "memtrain_packed_matmul_cpu"


@functools.cache
def panel_width() -> int:
  """Output columns per panel of this host's kernel build: two of its native float vectors (32
  with AVX-512, 16 with AVX2, 8 with SSE or NEON). Builds and loads the kernels."""
  function = cpu_library.load().MemtrainPackedMatmulPanel
  function.restype = ctypes.c_int64
  return int(function())


def pack(w: jax.Array, in_axes: int = 1, lead_axes: int = 0) -> jax.Array:
  """w [*lead, *out, *in] (`in_axes` input axes last, `lead_axes` leading axes such as stacked
  layers) -> float32 panels [*lead, ceil(N / P), K, P], N and K the out and in sizes, P the
  `panel_width`: panels[..., p, k, j] = w[..., P p + j, k], zero past N."""
  panel = panel_width()
  lead = w.shape[:lead_axes]
  k = math.prod(w.shape[w.ndim - in_axes:])
  w = w.reshape(*lead, -1, k).astype(jnp.float32)
  n = w.shape[-2]
  num_panels = -(-n // panel)
  w = jnp.pad(w, [(0, 0)] * lead_axes + [(0, num_panels * panel - n), (0, 0)])
  return jnp.swapaxes(w.reshape(*lead, num_panels, panel, k), -1, -2)


def packed_matmul(x: jax.Array, panels: jax.Array, n: int) -> jax.Array:
  """x [M, K] float32 times the weight packed in `panels` [ceil(n / P), K, P] (`pack`): y [M, n]
  = x . w^T, float32, each element one float32 sum over k in order."""
  panel = panel_width()
  if (x.ndim != 2 or panels.ndim != 3 or panels.shape[1:] != (x.shape[1], panel)
      or panels.shape[0] != -(-n // panel)):
    raise ValueError(f"packed_matmul wants x [M, K] and panels [ceil(n/{panel}), K, {panel}] "
                     f"(`pack` on this host); got x {x.shape}, panels {panels.shape}, n {n}")
  if x.dtype != jnp.float32 or panels.dtype != jnp.float32:
    raise ValueError(f"packed_matmul is float32 only; got x {x.dtype}, panels {panels.dtype}")
  return jax.ffi.ffi_call(TARGET_NAME, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32))(
      x, panels)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
  """A weight [*out_shape, K] held as `pack`'s panels, multiplied by `matmul(x, panels, n)`
  (`packed_matmul`, or it under `jax.shard_map` for a sharded batch)."""
  panels: jax.Array
  out_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  matmul: Callable = dataclasses.field(metadata=dict(static=True), default=packed_matmul)

  @property
  def in_features(self) -> int:
    return self.panels.shape[-2]

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [M, K] -> [M, *out_shape] float32."""
    y = self.matmul(x, self.panels, math.prod(self.out_shape))
    return y.reshape(x.shape[0], *self.out_shape)
