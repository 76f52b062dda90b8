// Decode attention on the CPU: one query token per row against the KV cache, on XLA's thread pool.
//
// XLA:CPU runs the batched score and value dots of decode attention on one thread, over the
// whole cache capacity, with the scores materialised between them. This kernel splits the
// (row, KV head) pairs over the intra-op thread pool and reads only each row's attended slots,
// [start[b], end): the left padding before a prompt and the empty slots after the newest token
// are skipped. Scores, softmax and the value sum stay in L1-sized blocks.
//
// Layouts are the sampler's cache (`memtrain_jax.models.decoder.init_cache`):
//   q    [B, H, D]     float32 or bfloat16, H = K * G (query heads grouped per KV head)
//   k_t  [B, K, D, S]  float32 or bfloat16 (K transposed)
//   v    [B, K, S, D]  the cache's dtype
//   start [B] int32, end [] int32    attended slots of row b: [start[b], end)
//   out  [B, H, D]     q's dtype
// Numerics follow `decoder.cached_attention`: float32 scores of q * D^-1/2 against K, the
// softmax's unnormalised probabilities rounded to q's dtype before the value sum, the sum divided
// by the (unrounded) normaliser, the result rounded to q's dtype. A row with no attended slot
// gets zeros.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bf16_bits = uint16_t;

inline float Widen(float x) { return x; }
inline float Widen(bf16_bits x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).
inline bf16_bits NarrowBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_bits>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16_bits>(bits >> 16);
}

inline void Store(float* out, int64_t i, float x) { out[i] = x; }
inline void Store(bf16_bits* out, int64_t i, float x) { out[i] = NarrowBits(x); }

// exp(x) for x <= 0 (a score minus its row's maximum), written with plain float arithmetic so
// that the compiler vectorises the loops around it: Cody-Waite reduction by ln 2 and a degree-6
// polynomial (Cephes' expf coefficients, relative error ~1e-7). Below -87 the result is clamped
// to exp(-87) ~ 1.6e-38, which is 0 next to the maximum's exp(0) = 1.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

// Row reductions kept lane-wise, so the compiler vectorises them without reassociating a
// single float accumulator (which it may not do under strict IEEE semantics).
constexpr int64_t kLanes = 16;

inline float RowMax(const float* x, int64_t n) {
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[j + l]);
  }
  float top = x[0];
  for (int64_t l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, x[j]);
  return top;
}

// x <- exp(x - top) in place; returns the sum of the results.
inline float ExpInPlace(float* x, int64_t n, float top) {
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      x[j + l] = ExpNonPositive(x[j + l] - top);
      lanes[l] += x[j + l];
    }
  }
  float total = 0.0f;
  for (; j < n; ++j) {
    x[j] = ExpNonPositive(x[j] - top);
    total += x[j];
  }
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// Key slots per block: a block of K ([D, kBlock]) or V ([kBlock, D]) rows stays in L1 while
// every query head of the group uses it.
constexpr int64_t kBlock = 64;

struct Dims {
  int64_t batch, heads, kv_heads, head_dim, slots;
  int64_t group() const { return heads / kv_heads; }
};

// One (row, KV head) pair: its G query heads against slots [lo, lo + len). kD is the head dim
// when known at compile time (the accumulators then live in registers), 0 otherwise.
template <int kD, typename QT, typename CT>
void AttendGroup(const QT* q, const CT* k_t, const CT* v, QT* out, const Dims& dims, int64_t lo,
                 int64_t len, std::vector<float>& scratch) {
  const int64_t group = dims.group();
  const int64_t head_dim = kD > 0 ? kD : dims.head_dim;
  const int64_t slots = dims.slots;
  if (len <= 0) {
    for (int64_t i = 0; i < group * head_dim; ++i) Store(out, i, 0.0f);
    return;
  }
  scratch.resize(group * len + 2 * group * head_dim + group);
  float* scores = scratch.data();               // [G, len]
  float* q_scaled = scores + group * len;       // [G, D]
  float* acc = q_scaled + group * head_dim;     // [G, D]
  float* norm = acc + group * head_dim;         // [G]
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t i = 0; i < group * head_dim; ++i) q_scaled[i] = Widen(q[i]) * scale;

  // Scores: for each block of slots, every head's dot with the K rows [D, block].
  for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const int64_t n = std::min(kBlock, len - j0);
    const CT* k_block = k_t + lo + j0;
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = q_scaled + g * head_dim;
      float block[kBlock];
      if (n == kBlock) {
        for (int64_t j = 0; j < kBlock; ++j) block[j] = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) {
          const CT* row = k_block + d * slots;
          const float qd = qg[d];
          for (int64_t j = 0; j < kBlock; ++j) block[j] += qd * Widen(row[j]);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) block[j] = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) {
          const CT* row = k_block + d * slots;
          const float qd = qg[d];
          for (int64_t j = 0; j < n; ++j) block[j] += qd * Widen(row[j]);
        }
      }
      std::memcpy(scores + g * len + j0, block, n * sizeof(float));
    }
  }

  // Softmax numerators, and their sum before any rounding (as `cached_attention`).
  constexpr bool kRoundProbs = sizeof(QT) == 2;
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores + g * len;
    const float top = RowMax(s, len);
    norm[g] = ExpInPlace(s, len, top);
    if (kRoundProbs) {
      for (int64_t j = 0; j < len; ++j) s[j] = Widen(NarrowBits(s[j]));
    }
  }

  // Values: for each block of slots, every head's weighted sum of the V rows [block, D].
  for (int64_t i = 0; i < group * head_dim; ++i) acc[i] = 0.0f;
  for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const int64_t n = std::min(kBlock, len - j0);
    const CT* v_block = v + (lo + j0) * head_dim;
    for (int64_t g = 0; g < group; ++g) {
      const float* p = scores + g * len + j0;
      float* a = acc + g * head_dim;
      if (kD > 0) {
        float sum[kD > 0 ? kD : 1];
        for (int64_t d = 0; d < kD; ++d) sum[d] = a[d];
        for (int64_t j = 0; j < n; ++j) {
          const CT* row = v_block + j * kD;
          const float pj = p[j];
          for (int64_t d = 0; d < kD; ++d) sum[d] += pj * Widen(row[d]);
        }
        for (int64_t d = 0; d < kD; ++d) a[d] = sum[d];
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const CT* row = v_block + j * head_dim;
          const float pj = p[j];
          for (int64_t d = 0; d < head_dim; ++d) a[d] += pj * Widen(row[d]);
        }
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t d = 0; d < head_dim; ++d) {
      Store(out, g * head_dim + d, acc[g * head_dim + d] / norm[g]);
    }
  }
}

template <int kD, typename QT, typename CT>
void AttendPair(const QT* q, const CT* k_t, const CT* v, const int32_t* start, int32_t end,
                QT* out, const Dims& dims, int64_t pair, std::vector<float>& scratch) {
  const int64_t b = pair / dims.kv_heads, k = pair % dims.kv_heads;
  const int64_t group = dims.group(), head_dim = dims.head_dim, slots = dims.slots;
  const int64_t lo = std::clamp<int64_t>(start[b], 0, slots);
  const int64_t hi = std::clamp<int64_t>(end, 0, slots);
  const int64_t heads_offset = (b * dims.heads + k * group) * head_dim;
  const int64_t cache_offset = (b * dims.kv_heads + k) * head_dim * slots;
  AttendGroup<kD>(q + heads_offset, k_t + cache_offset, v + cache_offset, out + heads_offset, dims,
                  lo, hi - lo, scratch);
}

// Work shared by the calling thread and the pool's: (row, KV head) pairs handed out one at a
// time. The caller works too and then waits only for pairs already taken, so the call finishes
// even when every pool thread is busy elsewhere; the state is shared because a scheduled task
// may start after the call has returned (it then finds no pair left).
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
};

template <int kD, typename QT, typename CT>
void Attend(ffi::ThreadPool& pool, const QT* q, const CT* k_t, const CT* v, const int32_t* start,
            int32_t end, QT* out, Dims dims) {
  const int64_t pairs = dims.batch * dims.kv_heads;
  auto progress = std::make_shared<Progress>();
  auto work = [=](Progress& state) {
    std::vector<float> scratch;
    for (int64_t pair; (pair = state.next.fetch_add(1)) < pairs;) {
      AttendPair<kD>(q, k_t, v, start, end, out, dims, pair, scratch);
      state.finished.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), pairs) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([progress, work] { work(*progress); });
  work(*progress);
  while (progress->finished.load(std::memory_order_acquire) < pairs) std::this_thread::yield();
}

template <typename QT, typename CT>
void DispatchHeadDim(ffi::ThreadPool& pool, const void* q, const void* k_t, const void* v,
                     const int32_t* start, int32_t end, void* out, const Dims& dims) {
  auto run = [&](auto head_dim) {
    Attend<decltype(head_dim)::value>(pool, static_cast<const QT*>(q), static_cast<const CT*>(k_t),
                                      static_cast<const CT*>(v), start, end,
                                      static_cast<QT*>(out), dims);
  };
  switch (dims.head_dim) {
    case 64: return run(std::integral_constant<int, 64>());
    case 128: return run(std::integral_constant<int, 128>());
    default: return run(std::integral_constant<int, 0>());
  }
}

ffi::Error Invalid(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "memtrain decode attention: " + message);
}

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k_t,
                               ffi::AnyBuffer v, ffi::Buffer<ffi::S32> start,
                               ffi::Buffer<ffi::S32> end, ffi::Result<ffi::AnyBuffer> out) {
  const auto qd = q.dimensions(), kd = k_t.dimensions(), vd = v.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || vd.size() != 4) {
    return Invalid("expected q [B, H, D], k_t [B, K, D, S], v [B, K, S, D]");
  }
  const Dims dims{qd[0], qd[1], kd[1], qd[2], kd[3]};
  if (dims.kv_heads <= 0 || dims.heads % dims.kv_heads != 0 || kd[0] != dims.batch ||
      kd[2] != dims.head_dim || vd[0] != dims.batch || vd[1] != dims.kv_heads ||
      vd[2] != dims.slots || vd[3] != dims.head_dim ||
      start.element_count() != static_cast<size_t>(dims.batch)) {
    return Invalid("inconsistent shapes of q, k_t, v, start");
  }
  const ffi::DataType q_type = q.element_type(), cache_type = k_t.element_type();
  const auto supported = [](ffi::DataType t) { return t == ffi::F32 || t == ffi::BF16; };
  if (!supported(q_type) || !supported(cache_type) || v.element_type() != cache_type ||
      out->element_type() != q_type) {
    return Invalid("q and the cache must be float32 or bfloat16, k_t and v of one dtype");
  }
  const int32_t* starts = start.typed_data();
  const int32_t end_slot = end.typed_data()[0];
  const void *qp = q.untyped_data(), *kp = k_t.untyped_data(), *vp = v.untyped_data();
  void* op = out->untyped_data();
  const bool q16 = q_type == ffi::BF16, c16 = cache_type == ffi::BF16;
  if (!q16 && !c16) DispatchHeadDim<float, float>(pool, qp, kp, vp, starts, end_slot, op, dims);
  if (q16 && !c16) DispatchHeadDim<bf16_bits, float>(pool, qp, kp, vp, starts, end_slot, op, dims);
  if (!q16 && c16) DispatchHeadDim<float, bf16_bits>(pool, qp, kp, vp, starts, end_slot, op, dims);
  if (q16 && c16) {
    DispatchHeadDim<bf16_bits, bf16_bits>(pool, qp, kp, vp, starts, end_slot, op, dims);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MemtrainDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k_t
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // start
                                  .Arg<ffi::Buffer<ffi::S32>>()  // end
                                  .Ret<ffi::AnyBuffer>());  // out
