"""The CPU packed-matmul kernel: layout, float64 reference, the decoder's decode steps, sharding,
the sampler's packed-weights cache and setting."""

import gc
import logging
import pathlib
import platform
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import sharding
from memtrain_jax.kernels import cpu_library
from memtrain_jax.kernels import packed_matmul as kernel
from memtrain_jax.sampling import decode_weights
from memtrain_jax.sampling import sampler as sampler_lib
from tests.rollout_fixtures import greedy_decode_program, tiny_config, tiny_params


def test_panel_width_is_two_of_the_hosts_native_vectors():
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  flags = cpuinfo.read_text() if cpuinfo.exists() else ""
  if platform.machine() not in ("x86_64", "AMD64") or " avx" not in flags:
    pytest.skip("an x86 Linux host with AVX")
  # Wider panels than the registers hold were 4-20x slower than XLA's matmul on AVX2.
  assert kernel.panel_width() == (32 if " avx512f" in flags else 16)


def test_pack_lays_out_panels_of_output_columns_k_major():
  rng = np.random.default_rng(0)
  width = kernel.panel_width()
  w = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)  # [layers, out 5 x 7, in 3]: N 35
  panels = np.asarray(kernel.pack(jnp.asarray(w), in_axes=1, lead_axes=1))
  num_panels = -(-35 // width)
  assert panels.shape == (2, num_panels, 3, width)
  flat = w.reshape(2, 35, 3)
  for layer in range(2):
    for n in range(num_panels * width):
      p, j = divmod(n, width)
      want = flat[layer, n] if n < 35 else np.zeros(3)
      np.testing.assert_array_equal(panels[layer, p, :, j], want)
  # Two input axes (wo: [embed, heads, head_dim]) are flattened in order.
  wo = rng.standard_normal((4, 2, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(kernel.pack(jnp.asarray(wo), in_axes=2))[0, :, :4],
                                wo.reshape(4, 6).T)


# Rows: every row-block path (12, 8, 4, 2, 1 with AVX-512; 6, 4, 2, 1 with AVX2; their mixes),
# below and above the 2 threads' count; columns: one partial panel, whole panels, a partial last
# panel, many panels (pieces).
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 13, 17, 33])
@pytest.mark.parametrize("k,n", [(5, 7), (64, 32), (48, 200), (16, 2100)])
def test_matches_a_float64_reference(m, k, n):
  rng = np.random.default_rng(m * 1000 + n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((n, k)).astype(np.float32)
  got = jax.jit(kernel.packed_matmul, static_argnums=2)(x, kernel.pack(jnp.asarray(w)), n)
  want = x.astype(np.float64) @ w.astype(np.float64).T
  assert got.shape == (m, n) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


# Prefill's many rows (x over 512 KiB) are tiled in row chunks of ~192 KiB: several chunks and a
# partial last one; with fewer chunks than the threads need, panel groups too (the 1536 wide
# case); columns in partial panels.
@pytest.mark.parametrize("m,k,n", [(700, 200, 37), (101, 1536, 50), (2500, 64, 300)])
def test_many_rows_match_a_float64_reference_and_the_few_rows_path(m, k, n):
  assert m * k * 4 > 512 * 1024  # the tiled path
  rng = np.random.default_rng(m + k + n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((n, k)).astype(np.float32)
  matmul = jax.jit(kernel.packed_matmul, static_argnums=2)
  panels = kernel.pack(jnp.asarray(w))
  got = np.asarray(matmul(x, panels, n))
  want = x.astype(np.float64) @ w.astype(np.float64).T
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))
  # Each element is the same float32 sum over k in order whichever path computes it: rows taken
  # a few at a time (the decode path) give the same bits.
  for rows in (slice(0, 7), slice(m - 13, m), slice(m // 2, m // 2 + 5)):
    np.testing.assert_array_equal(got[rows], np.asarray(matmul(x[rows], panels, n)))


def test_bad_shapes_and_dtypes_are_refused():
  x = jnp.ones((4, 16), jnp.float32)
  panels = kernel.pack(jnp.ones((40, 16), jnp.float32))
  width = kernel.panel_width()
  with pytest.raises(ValueError, match=f"panels \\[ceil\\(n/{width}\\), K, {width}\\]"):
    kernel.packed_matmul(x, panels, 70)  # 70 columns need more panels than 40
  with pytest.raises(ValueError, match="x \\[M, K\\]"):
    kernel.packed_matmul(x[:, :8], panels, 40)
  with pytest.raises(ValueError, match="float32 only"):
    kernel.packed_matmul(x.astype(jnp.bfloat16), panels, 40)


@pytest.mark.parametrize("scan_layers,qkv_bias", [(False, False), (True, True)])
def test_decode_steps_with_packed_weights_match_xla(scan_layers, qkv_bias):
  """`forward_with_cache` and the logits over `decode_weights.pack_matrices`' weights, step by
  step in one jitted loop, against XLA's matmuls; layers unrolled or stacked, with biases."""
  config = tiny_config(vocab_size=300, num_heads=6, num_kv_heads=2, head_dim=16,
                       scan_layers=scan_layers, qkv_bias=qkv_bias)
  params = tiny_params(config)
  packed = decode_weights.with_packed(
      params, decode_weights.pack_matrices(config, params, kernel.packed_matmul))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, config.vocab_size, (5, 12)), jnp.int32)
  run = greedy_decode_program(config, params, tokens, jnp.asarray([0, 4, 9, 1, 0], jnp.int32),
                              steps=6)
  (_, ours, our_tokens), (_, xla, xla_tokens) = run(packed), run(params)
  # Logits of magnitude ~5 after 6 steps: float32 sums in another order, 1e-4 apart at most.
  np.testing.assert_allclose(np.asarray(ours), np.asarray(xla), rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(our_tokens), np.asarray(xla_tokens))
  # The kernel is really in the program: 7 layer matrices a layer (one call under scan), the head.
  text = run.lower(packed).as_text()
  calls = 7 * (1 if scan_layers else config.num_layers) + 1
  assert text.count(f"@{kernel.TARGET_NAME}(") == calls
  assert kernel.TARGET_NAME not in run.lower(params).as_text()


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1)])
def test_sharded_matmul_equals_one_device(mesh_shape):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(mesh_shape)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)
  panels = kernel.pack(jnp.asarray(rng.standard_normal((70, 24)), jnp.float32))
  single = jax.jit(kernel.packed_matmul, static_argnums=2)(x, panels, 70)
  sharded = jax.jit(sampler_lib.shard_packed_matmul(mesh), static_argnums=2)(x, panels, 70)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))


def test_the_cache_packs_once_per_parameters_and_holds_no_old_ones():
  config = tiny_config()
  cache = decode_weights.PackedWeightsCache(config, kernel.packed_matmul)
  params = tiny_params(config, seed=0)
  first = cache(params)
  again = cache(params)
  assert cache.packs == 1
  assert again["layers"][0]["wq"].panels is first["layers"][0]["wq"].panels
  assert again["embed"] is params["embed"]  # not packed, not copied
  new = jax.tree.map(lambda x: x + 1, params)  # a training step's update: new arrays
  packed_new = cache(new)
  assert cache.packs == 2
  np.testing.assert_array_equal(
      np.asarray(packed_new["unembedding"].panels),
      np.asarray(kernel.pack(new["embed"] if config.tie_embeddings else new["lm_head"])))
  # Only weak references: the old parameters are freed once their owner drops them.
  probe = params["layers"][0]["wq"]
  ref = weakref.ref(probe)
  del params, first, again, probe
  gc.collect()
  assert ref() is None


def test_resolving_the_setting(monkeypatch, caplog):
  f32, bf16 = tiny_config(), tiny_config(compute_dtype="bfloat16")
  assert sampler_lib.resolve_matmul("auto", "cpu", f32) is kernel.packed_matmul
  assert sampler_lib.resolve_matmul("kernel", "cpu", f32) is kernel.packed_matmul
  assert sampler_lib.resolve_matmul("xla", "cpu", f32) is None
  assert sampler_lib.resolve_matmul("auto", "gpu", f32) is None
  assert sampler_lib.resolve_matmul("auto", "cpu", bf16) is None
  tensor_mesh = sharding.make_mesh((4, 1, 2))
  assert sampler_lib.resolve_matmul("auto", "cpu", f32, tensor_mesh) is None
  assert callable(sampler_lib.resolve_matmul("auto", "cpu", f32, sharding.make_mesh((8, 1, 1))))
  with pytest.raises(ValueError, match="backend is 'tpu'"):
    sampler_lib.resolve_matmul("kernel", "tpu", f32)
  with pytest.raises(ValueError, match="float32 only; the compute dtype is bfloat16"):
    sampler_lib.resolve_matmul("kernel", "cpu", bf16)
  with pytest.raises(ValueError, match="over 'tensor' \\(2 devices\\)"):
    sampler_lib.resolve_matmul("kernel", "cpu", f32, tensor_mesh)
  with pytest.raises(ValueError, match="SamplerConfig.decode_matmul='fast'; use one of"):
    sampler_lib.resolve_matmul("fast", "cpu", f32)
  with pytest.raises(ValueError, match="SamplerConfig.prefill_matmul='kernel' cannot be used"):
    sampler_lib.resolve_matmul("kernel", "cpu", bf16, field="prefill_matmul")
  monkeypatch.setattr(cpu_library, "unavailable_reason", lambda: "no compiler here")
  sampler_lib._warn_kernel_fallback.cache_clear()  # warned once per reason
  with caplog.at_level(logging.WARNING, logger="memtrain"):
    assert sampler_lib.resolve_matmul("auto", "cpu", f32) is None
  assert "no compiler here" in caplog.text
  with pytest.raises(cpu_library.KernelUnavailableError, match="no compiler here"):
    sampler_lib.resolve_matmul("kernel", "cpu", f32)
