// Decode attention on the CPU: one query token per row writes its K/V into the cache and attends
// to it, on XLA's thread pool.
//
// XLA:CPU runs the batched score and value dots of decode attention on one thread, over the
// whole cache capacity, with the scores materialised between them, and its write of one K column
// into the transposed K cache strides over every row of it. This kernel splits the (row, KV head)
// pairs over the intra-op thread pool; each pair writes its new K/V column in place (the cache
// buffers are aliased to the outputs) and reads only the row's attended slots,
// [start[b], slot]: the left padding before a prompt and the empty slots after the newest token
// are skipped. The scores are computed a block of slots at a time for all query heads of the KV
// head together, each K and V row loaded and widened once, the sums in vector registers; the
// block's V rows are prefetched meanwhile.
//
// Layouts are the sampler's cache (`memtrain_jax.models.decoder.init_cache`):
//   q      [B, H, D]     float32 or bfloat16, H = K * G (query heads grouped per KV head)
//   k_new, v_new [B, K, D]  the token's K and V, q's dtype
//   k_t    [B, K, D, S]  float32 or bfloat16 (K transposed), updated in place
//   v      [B, K, S, D]  the cache's dtype, updated in place
//   start [B] int32, slot [] int32    write slot; attended slots of row b: [start[b], slot]
//   out    [B, H, D]     q's dtype
// The new K/V are rounded to the cache's dtype (to nearest even) as `astype` would. Attention
// follows `decoder.cached_attention`: float32 scores of q * D^-1/2 (rounded to bf16 when q and
// the cache are) against K, the softmax's unnormalised probabilities rounded to q's dtype before
// the value sum, the sum divided by the (unrounded) normaliser, the result rounded to q's dtype.
// A row with no attended slot gets zeros.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_vectors.h"
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

// x as a buffer of element type CT (the cache's, or q's) holds it.
template <typename CT>
inline float AsStored(float x) {
  return sizeof(CT) == 2 ? Widen(NarrowBits(x)) : x;
}

// The native float vector (`cpu_vectors.h`) and as many 32-bit words. The hot loops are written
// with them, so they are vectorised whatever the auto-vectoriser decides (it left lane-wise
// scalar loops of the softmax scalar), and their sums stay in registers.
using memtrain::kLanes;
using memtrain::Vec;
// Vector registers a register-blocked loop may fill with sums: half of them (16 with AVX-512,
// 8 with AVX2), the rest holding the loaded row and the broadcast scalars.
constexpr int kSumRegisters = memtrain::kVectorRegisters / 2;
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint32_t Words __attribute__((vector_size(kLanes * sizeof(uint32_t))));

template <typename To, typename From>
inline To BitCast(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

using memtrain::LoadVec;  // float; the bfloat16 overload widens
inline Vec LoadVec(const bf16_bits* p) {
  typedef bf16_bits Halves __attribute__((vector_size(kLanes * sizeof(bf16_bits))));
  Halves h;
  std::memcpy(&h, p, sizeof(h));
  return BitCast<Vec>(__builtin_convertvector(h, Words) << 16);
}

// Each lane rounded to bfloat16 and widened back, as Widen(NarrowBits(x)) does.
inline Vec RoundToBf16(Vec x) {
  const Words bits = BitCast<Words>(x);
  const Words rounded = (bits + (0x7fffu + ((bits >> 16) & 1u))) & 0xffff0000u;
  const Words quiet_nan = (bits | 0x400000u) & 0xffff0000u;
  return BitCast<Vec>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// exp(x) for x <= 0 (a score minus its row's maximum): Cody-Waite reduction by ln 2 and a
// degree-6 polynomial (Cephes' expf coefficients, relative error ~1e-7). Below -87 the result
// is clamped to exp(-87) ~ 1.6e-38, which is 0 next to the maximum's exp(0) = 1.
inline Vec ExpNonPositive(Vec x) {
  const Vec floor_x = Vec{} - 87.0f;
  x = x < floor_x ? floor_x : x;
  const Vec t = x * 1.44269504088896341f + 0.5f;
  Vec n = __builtin_convertvector(__builtin_convertvector(t, Ints), Vec);  // t rounded to zero
  n = t < n ? n - 1.0f : n;                                               // floor(t)
  const Vec r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec y = p * r * r + r + 1.0f;
  return y * BitCast<Vec>((__builtin_convertvector(n, Ints) + 127) << 23);
}

inline float RowMax(const float* x, int64_t n) {
  Vec lanes = Vec{} + x[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec v = LoadVec(x + j);
    lanes = lanes < v ? v : lanes;
  }
  float top = x[0];
  for (int64_t l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, x[j]);
  return top;
}

// x <- exp(x - top) in place, rounded to bfloat16 with kRound; returns the sum of the results
// before that rounding (as `cached_attention`'s normaliser).
template <bool kRound>
inline float ExpInPlace(float* x, int64_t n, float top) {
  Vec lanes = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Vec e = ExpNonPositive(LoadVec(x + j) - top);
    lanes += e;
    if (kRound) e = RoundToBf16(e);
    std::memcpy(x + j, &e, sizeof(e));
  }
  if (j < n) {  // the last n - j < kLanes entries, through a padded copy
    const int64_t m = n - j;
    float part[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) part[l] = l < m ? x[j + l] : top;  // exp(0), not added
    Vec e = ExpNonPositive(LoadVec(part) - top);
    for (int64_t l = m; l < kLanes; ++l) e[l] = 0.0f;
    lanes += e;
    if (kRound) e = RoundToBf16(e);
    for (int64_t l = 0; l < m; ++l) x[j + l] = e[l];
  }
  float total = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// acc[g] += scalars[g * stride] * row for kG heads, row being kParts vectors of CT loaded and
// widened once for all of them: the step both register-blocked loops below repeat (over d with
// q's entries for the scores, over slots with the probabilities for the value sums).
template <int kG, int kParts, typename CT>
inline void AddScaledRow(Vec (&acc)[kG][kParts], const CT* row, const float* scalars,
                         int64_t stride) {
  Vec r[kParts];
  for (int c = 0; c < kParts; ++c) r[c] = LoadVec(row + c * kLanes);
  for (int g = 0; g < kG; ++g) {
    const float s = scalars[g * stride];
    for (int c = 0; c < kParts; ++c) acc[g][c] += s * r[c];
  }
}

// The next (row, KV head) pair's attended K rows, prefetched a few cache lines per step of this
// pair's scores pass, so that they arrive while this pair computes. The scores pass reads its K
// rows a window at a time, 64 rows of a few lines each at a stride of the capacity, which the
// hardware prefetchers do not run ahead of: each window waited on its lines. SmolLM2's 30 layers
// at batch 32 over 256 slots on a 2-core AMD EPYC (Zen 4), through XLA, alternating processes:
// 13.4-15.4 ms against 17.2-18.9 ms without.
struct NextRowsPrefetch {
  const char* first = nullptr;  // the line holding the first attended slot of row 0
  int64_t row_stride = 0;       // bytes between rows
  int64_t rows = 0, lines_per_row = 0, per_step = 0;
  int64_t row = 0, line = 0;    // the next line to prefetch

  // `rows` rows of `bytes` bytes from `data`, `stride` bytes apart, over `steps` calls of Step().
  NextRowsPrefetch(const void* data, int64_t num_rows, int64_t bytes, int64_t stride,
                   int64_t steps) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(data);
    first = reinterpret_cast<const char*>(address & ~uintptr_t{63});
    lines_per_row = (static_cast<int64_t>(address & 63) + bytes + 63) / 64;
    row_stride = stride;
    rows = bytes > 0 ? num_rows : 0;
    per_step = (rows * lines_per_row + std::max<int64_t>(steps, 1) - 1) /
               std::max<int64_t>(steps, 1);
  }
  NextRowsPrefetch() = default;

  // The next per_step lines, row by row (counters rather than a division per line: this runs in
  // the scores pass's inner loop).
  void Step() {
    for (int64_t i = 0; i < per_step && row < rows; ++i) {
      __builtin_prefetch(first + row * row_stride + line * 64, 0, 1);
      if (++line == lines_per_row) {
        line = 0;
        ++row;
      }
    }
  }
};

// Key slots per block of scores: four vectors (64 with AVX-512, 32 with AVX2). The scores of
// kScoreHeads query heads at a time (4 with AVX-512, 2 with AVX2) fill kSumRegisters.
constexpr int64_t kBlock = 4 * kLanes;
constexpr int kScoreHeads = std::max(1, kSumRegisters / 4);

// Scores of kG query heads (q [kG, head_dim], scaled) against a window of kBlock slots, the K
// rows [head_dim, kBlock] at stride `slots` from k_window: each K row is loaded and widened once
// for all kG heads (not once per head), and the kG x kBlock sums stay in registers. Head g's
// scores of the window's slots [skip, skip + n) go to out[g * out_stride + j], j < n. Each sum
// runs over d in order, as the scalar loop's does.
//
// When v_block is given, the n V rows there ([n, head_dim], spread over the head_dim iterations)
// are prefetched meanwhile, so that the value sum finds them in cache: the scores pass then
// overlaps the V stream's memory latency with its own work. When next_k is given, it takes one
// step per iteration.
template <int kG, typename CT>
void ScoreWindow(const float* q, int64_t head_dim, const CT* k_window, int64_t slots,
                 float* out, int64_t out_stride, int64_t skip, int64_t n, const CT* v_block,
                 NextRowsPrefetch* next_k) {
  constexpr int kParts = kBlock / kLanes;
  constexpr int64_t kPrefetchBytes = kBlock * sizeof(CT);  // per d: kBlock V rows over head_dim
  const int64_t v_bytes = v_block != nullptr ? n * head_dim * sizeof(CT) : 0;
  Vec acc[kG][kParts] = {};
  for (int64_t d = 0; d < head_dim; ++d) {
    for (int64_t b = d * kPrefetchBytes; b < std::min(v_bytes, (d + 1) * kPrefetchBytes); b += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(v_block) + b, 0, 2);
    }
    if (next_k != nullptr) next_k->Step();
    AddScaledRow(acc, k_window + d * slots, q + d, head_dim);
  }
  for (int g = 0; g < kG; ++g) {
    if (skip == 0 && n == kBlock) {
      for (int c = 0; c < kParts; ++c) {
        std::memcpy(out + g * out_stride + c * kLanes, &acc[g][c], sizeof(Vec));
      }
    } else {
      const char* sums = reinterpret_cast<const char*>(acc[g]);
      std::memcpy(out + g * out_stride, sums + skip * sizeof(float), n * sizeof(float));
    }
  }
}

// acc[g] += sum_j p[g * p_stride + j] * v[j] for kG heads over n V rows of kCols of kD columns
// (v and acc point at the first column; rows of v and of acc are kD apart): each V row is loaded
// and widened once for all kG heads, the kG x kCols sums stay in registers. The sums run over j
// in order, as the per-head loop's do.
template <int kD, int kCols, int kG, typename CT>
void AccumulateValues(const float* p, int64_t p_stride, const CT* v, int64_t n, float* acc) {
  constexpr int kParts = kCols / kLanes;
  static_assert(kCols % kLanes == 0, "the vectorised value sum wants a head dim of whole vectors");
  Vec sum[kG][kParts];
  for (int g = 0; g < kG; ++g) {
    for (int c = 0; c < kParts; ++c) sum[g][c] = LoadVec(acc + g * kD + c * kLanes);
  }
  for (int64_t j = 0; j < n; ++j) AddScaledRow(sum, v + j * kD, p + j, p_stride);
  for (int g = 0; g < kG; ++g) {
    for (int c = 0; c < kParts; ++c) {
      std::memcpy(acc + g * kD + c * kLanes, &sum[g][c], sizeof(Vec));
    }
  }
}

// Calls body(g0, std::integral_constant<int, n>()) for the heads [g0, g0 + n), g0 = 0, kMax,
// 2 kMax, ..., n = min(kMax, group - g0): the register-blocked loops above take at most kMax heads
// (their sums must fit in the vector registers).
template <int kMax, typename Body>
void ForHeadChunks(int64_t group, Body body) {
  static_assert(kMax >= 1 && kMax <= 4, "chunks of 1 to 4 heads");
  for (int64_t g0 = 0; g0 < group; g0 += kMax) {
    switch (std::min<int64_t>(kMax, group - g0)) {
      case 1: body(g0, std::integral_constant<int, 1>()); break;
      case 2: if constexpr (kMax >= 2) body(g0, std::integral_constant<int, 2>()); break;
      case 3: if constexpr (kMax >= 3) body(g0, std::integral_constant<int, 3>()); break;
      default: if constexpr (kMax >= 4) body(g0, std::integral_constant<int, 4>()); break;
    }
  }
}

struct Dims {
  int64_t batch, heads, kv_heads, head_dim, slots;
  int64_t group() const { return heads / kv_heads; }
};

// One (row, KV head) pair: its G query heads against the cached slots [lo, lo + cached), then,
// when k_self is given, one more slot whose K and V (head_dim floats each) are k_self and v_self.
// kD is the head dim when known at compile time (the value sums then live in registers), 0
// otherwise. next_k (or null) is the next pair's K to prefetch during the scores pass.
template <int kD, typename QT, typename CT>
void AttendGroup(const QT* q, const CT* k_t, const CT* v, QT* out, const Dims& dims, int64_t lo,
                 int64_t cached, const float* k_self, const float* v_self,
                 std::vector<float>& scratch, NextRowsPrefetch* next_k) {
  const int64_t group = dims.group();
  const int64_t head_dim = kD > 0 ? kD : dims.head_dim;
  const int64_t slots = dims.slots;
  const int64_t len = cached + (k_self != nullptr ? 1 : 0);
  if (len <= 0) {
    for (int64_t i = 0; i < group * head_dim; ++i) Store(out, i, 0.0f);
    return;
  }
  scratch.resize(group * len + 2 * group * head_dim + group);
  float* scores = scratch.data();               // [G, len]
  float* q_scaled = scores + group * len;       // [G, D]
  float* acc = q_scaled + group * head_dim;     // [G, D]
  float* norm = acc + group * head_dim;         // [G]
  // q * D^-1/2 as `cached_attention` computes it, in the cache's dtype: with a bf16 q and cache
  // the scale and the product are rounded to bf16 (exact for D = 64, not for D = 128). (A float32
  // q keeps its precision against a bf16 cache, where `cached_attention` rounds it to bf16.)
  using ScaleT = std::conditional_t<sizeof(QT) == 2 && sizeof(CT) == 2, bf16_bits, float>;
  const double exact_scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const float scale = AsStored<ScaleT>(static_cast<float>(exact_scale));
  for (int64_t i = 0; i < group * head_dim; ++i) {
    q_scaled[i] = AsStored<ScaleT>(Widen(q[i]) * scale);
  }

  // Scores: for each block of slots, every head's dot with the K rows [D, block]. A last block
  // of n < kBlock slots is computed as a whole window that ends or starts with it (the other
  // slots of the window are read and their scores dropped) while the row has kBlock slots.
  for (int64_t j0 = 0; j0 < cached; j0 += kBlock) {
    const int64_t n = std::min(kBlock, cached - j0);
    const int64_t first = lo + j0;
    int64_t window = -1;
    if (first + kBlock <= slots) {
      window = first;
    } else if (first + n >= kBlock) {
      window = first + n - kBlock;
    }
    if (window >= 0) {
      ForHeadChunks<kScoreHeads>(group, [&](int64_t g0, auto heads) {
        ScoreWindow<decltype(heads)::value>(q_scaled + g0 * head_dim, head_dim, k_t + window,
                                            slots, scores + g0 * len + j0, len, first - window, n,
                                            g0 == 0 ? v + first * head_dim : nullptr,
                                            g0 == 0 ? next_k : nullptr);
      });
      continue;
    }
    for (int64_t g = 0; g < group; ++g) {  // a row of fewer than kBlock slots
      const float* qg = q_scaled + g * head_dim;
      float block[kBlock];
      for (int64_t j = 0; j < n; ++j) block[j] = 0.0f;
      for (int64_t d = 0; d < head_dim; ++d) {
        const CT* row = k_t + first + d * slots;
        const float qd = qg[d];
        for (int64_t j = 0; j < n; ++j) block[j] += qd * Widen(row[j]);
      }
      std::memcpy(scores + g * len + j0, block, n * sizeof(float));
    }
  }
  if (k_self != nullptr) {
    for (int64_t g = 0; g < group; ++g) {
      float dot = 0.0f;
      for (int64_t d = 0; d < head_dim; ++d) dot += q_scaled[g * head_dim + d] * k_self[d];
      scores[g * len + cached] = dot;
    }
  }

  // Softmax numerators, and their sum before any rounding (as `cached_attention`).
  constexpr bool kRoundProbs = sizeof(QT) == 2;
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores + g * len;
    const float top = RowMax(s, len);
    norm[g] = ExpInPlace<kRoundProbs>(s, len, top);
  }

  // Values: every head's weighted sum of the V rows [cached, D].
  for (int64_t i = 0; i < group * head_dim; ++i) acc[i] = 0.0f;
  const CT* v_rows = v + lo * head_dim;
  if constexpr (kD > 0) {
    // Each chunk of heads and columns keeps its sums in kSumRegisters registers (AVX-512: 4
    // heads of 64 columns or 2 of 128; AVX2: one head's 64 columns at a time).
    constexpr int kCols = std::min(kD, kSumRegisters * kLanes);
    constexpr int kHeads = std::max(1, std::min(4, kSumRegisters * kLanes / kD));
    static_assert(kD % kCols == 0, "whole chunks of columns");
    for (int64_t c0 = 0; c0 < kD; c0 += kCols) {
      ForHeadChunks<kHeads>(group, [&](int64_t g0, auto heads) {
        AccumulateValues<kD, kCols, decltype(heads)::value>(scores + g0 * len, len, v_rows + c0,
                                                            cached, acc + g0 * kD + c0);
      });
    }
  } else {
    for (int64_t g = 0; g < group; ++g) {
      const float* p = scores + g * len;
      float* a = acc + g * head_dim;
      for (int64_t j = 0; j < cached; ++j) {
        const CT* row = v_rows + j * head_dim;
        const float pj = p[j];
        for (int64_t d = 0; d < head_dim; ++d) a[d] += pj * Widen(row[d]);
      }
    }
  }
  if (v_self != nullptr) {
    for (int64_t g = 0; g < group; ++g) {
      const float p = scores[g * len + cached];
      for (int64_t d = 0; d < head_dim; ++d) acc[g * head_dim + d] += p * v_self[d];
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t d = 0; d < head_dim; ++d) {
      Store(out, g * head_dim + d, acc[g * head_dim + d] / norm[g]);
    }
  }
}

// The pointers of one decode-attention call.
template <typename QT, typename CT>
struct Operands {
  const QT* q;
  const QT* k_new;
  const QT* v_new;
  CT* k_t;
  CT* v;
  const int32_t* start;
  int32_t slot;
  QT* out;
};

// Per-thread buffers (kept between calls): attention's scores and sums, and the new slot's K and V
// as stored.
struct Scratch {
  std::vector<float> attention;
  std::vector<float> self;
};

// The slots [lo, lo + n) row b attends from the cache (n counts the slot being written).
inline void AttendedSlots(const int32_t* start, int32_t slot, const Dims& dims, int64_t b,
                          int64_t* lo, int64_t* n) {
  *lo = std::clamp<int64_t>(start[b], 0, dims.slots);
  *n = std::max<int64_t>(std::clamp<int64_t>(int64_t{slot} + 1, 0, dims.slots) - *lo, 0);
}

// One (row, KV head) pair; with prefetch_next, the next pair's K rows are prefetched meanwhile.
template <int kD, typename QT, typename CT>
void AttendPair(const Operands<QT, CT>& x, const Dims& dims, int64_t pair, bool prefetch_next,
                Scratch& scratch) {
  const int64_t b = pair / dims.kv_heads, k = pair % dims.kv_heads;
  const int64_t group = dims.group(), head_dim = dims.head_dim, slots = dims.slots;
  const int64_t heads_offset = (b * dims.heads + k * group) * head_dim;
  const int64_t cache_offset = (b * dims.kv_heads + k) * head_dim * slots;
  CT* k_t = x.k_t + cache_offset;
  CT* v = x.v + cache_offset;
  const QT* k_new = x.k_new + pair * head_dim;
  const QT* v_new = x.v_new + pair * head_dim;
  int64_t lo, cached;
  AttendedSlots(x.start, x.slot, dims, b, &lo, &cached);
  const bool writes = x.slot >= 0 && x.slot < slots;
  // The new slot is attended from k_new / v_new (as the cache will hold them) and written only
  // afterwards: by then the lines of the K column were read with the last block of slots, so the
  // strided write hits the cache instead of waiting on memory line by line.
  const float* k_self = nullptr;
  const float* v_self = nullptr;
  if (writes && lo <= x.slot) {
    scratch.self.resize(2 * head_dim);
    float* self = scratch.self.data();
    for (int64_t d = 0; d < head_dim; ++d) {
      self[d] = AsStored<CT>(Widen(k_new[d]));
      self[head_dim + d] = AsStored<CT>(Widen(v_new[d]));
    }
    k_self = self;
    v_self = self + head_dim;
    cached -= 1;
  }
  NextRowsPrefetch next_k;
  if (prefetch_next) {
    // The next pair's K rows, over this pair's scores pass: head_dim steps per block of slots.
    const int64_t next_b = (pair + 1) / dims.kv_heads;
    int64_t next_lo, next_n;
    AttendedSlots(x.start, x.slot, dims, next_b, &next_lo, &next_n);
    next_k = NextRowsPrefetch(x.k_t + cache_offset + head_dim * slots + next_lo, head_dim,
                              next_n * int64_t{sizeof(CT)}, slots * int64_t{sizeof(CT)},
                              (cached + kBlock - 1) / kBlock * head_dim);
  }
  AttendGroup<kD>(x.q + heads_offset, static_cast<const CT*>(k_t), static_cast<const CT*>(v),
                  x.out + heads_offset, dims, lo, cached, k_self, v_self, scratch.attention,
                  prefetch_next ? &next_k : nullptr);
  if (writes) {
    for (int64_t d = 0; d < head_dim; ++d) Store(k_t, d * slots + x.slot, Widen(k_new[d]));
    for (int64_t d = 0; d < head_dim; ++d) Store(v, x.slot * head_dim + d, Widen(v_new[d]));
  }
}

template <int kD, typename QT, typename CT>
void Attend(ffi::ThreadPool& pool, const Operands<QT, CT>& operands, const Dims& dims) {
  // Pieces of consecutive (row, KV head) pairs, about two per thread: within a piece each pair
  // prefetches the next one's K (adjacent in the cache), and the pieces still balance threads
  // that start late. Each pair is a whole attention over its row's slots.
  const int64_t pairs = dims.batch * dims.kv_heads;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t grain = std::max<int64_t>(1, pairs / (2 * threads));
  memtrain::ParallelFor(pool, pairs, grain, [x = operands, dims](int64_t first, int64_t last) {
    thread_local Scratch scratch;
    for (int64_t pair = first; pair < last; ++pair) {
      AttendPair<kD>(x, dims, pair, /*prefetch_next=*/pair + 1 < last, scratch);
    }
  });
}

template <typename QT, typename CT>
void DispatchHeadDim(ffi::ThreadPool& pool, ffi::AnyBuffer q, ffi::AnyBuffer k_new,
                     ffi::AnyBuffer v_new, const int32_t* start, int32_t slot,
                     ffi::AnyBuffer* out, ffi::AnyBuffer* k_t, ffi::AnyBuffer* v,
                     const Dims& dims) {
  const Operands<QT, CT> operands{
      static_cast<const QT*>(q.untyped_data()), static_cast<const QT*>(k_new.untyped_data()),
      static_cast<const QT*>(v_new.untyped_data()), static_cast<CT*>(k_t->untyped_data()),
      static_cast<CT*>(v->untyped_data()), start, slot, static_cast<QT*>(out->untyped_data())};
  auto run = [&](auto head_dim) { Attend<decltype(head_dim)::value>(pool, operands, dims); };
  switch (dims.head_dim) {
    case 64: return run(std::integral_constant<int, 64>());
    case 128: return run(std::integral_constant<int, 128>());
    default: return run(std::integral_constant<int, 0>());
  }
}

ffi::Error Invalid(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "memtrain decode attention: " + message);
}

// k_t_in and v_in are aliased to the k_t and v results: the kernel reads and writes the cache
// through the results (XLA copies an operand into its result first if it cannot donate it).
ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k_new,
                               ffi::AnyBuffer v_new, ffi::AnyBuffer k_t_in, ffi::AnyBuffer v_in,
                               ffi::Buffer<ffi::S32> start, ffi::Buffer<ffi::S32> slot,
                               ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> k_t,
                               ffi::Result<ffi::AnyBuffer> v) {
  const auto qd = q.dimensions(), kd = k_t->dimensions(), vd = v->dimensions();
  const auto nd = k_new.dimensions(), vnd = v_new.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || vd.size() != 4 || nd.size() != 3 || vnd.size() != 3) {
    return Invalid("expected q [B, H, D], k_new and v_new [B, K, D], k_t [B, K, D, S], "
                   "v [B, K, S, D]");
  }
  const Dims dims{qd[0], qd[1], kd[1], qd[2], kd[3]};
  if (dims.kv_heads <= 0 || dims.heads % dims.kv_heads != 0 || kd[0] != dims.batch ||
      kd[2] != dims.head_dim || vd[0] != dims.batch || vd[1] != dims.kv_heads ||
      vd[2] != dims.slots || vd[3] != dims.head_dim || nd[0] != dims.batch ||
      nd[1] != dims.kv_heads || nd[2] != dims.head_dim || vnd[0] != nd[0] || vnd[1] != nd[1] ||
      vnd[2] != nd[2] || start.element_count() != static_cast<size_t>(dims.batch) ||
      k_t_in.untyped_data() != k_t->untyped_data() || v_in.untyped_data() != v->untyped_data()) {
    return Invalid("inconsistent shapes of q, k_new, v_new, k_t, v, start, or a cache not "
                   "aliased to its result");
  }
  const ffi::DataType q_type = q.element_type(), cache_type = k_t->element_type();
  const auto supported = [](ffi::DataType t) { return t == ffi::F32 || t == ffi::BF16; };
  if (!supported(q_type) || !supported(cache_type) || v->element_type() != cache_type ||
      k_new.element_type() != q_type || v_new.element_type() != q_type ||
      out->element_type() != q_type) {
    return Invalid("q, k_new, v_new must share a dtype and the cache k_t, v another, each "
                   "float32 or bfloat16");
  }
  const int32_t* starts = start.typed_data();
  const int32_t write_slot = slot.typed_data()[0];
  ffi::AnyBuffer *o = &*out, *kc = &*k_t, *vc = &*v;
  const bool q16 = q_type == ffi::BF16, c16 = cache_type == ffi::BF16;
  if (!q16 && !c16) {
    DispatchHeadDim<float, float>(pool, q, k_new, v_new, starts, write_slot, o, kc, vc, dims);
  } else if (q16 && !c16) {
    DispatchHeadDim<bf16_bits, float>(pool, q, k_new, v_new, starts, write_slot, o, kc, vc, dims);
  } else if (!q16 && c16) {
    DispatchHeadDim<float, bf16_bits>(pool, q, k_new, v_new, starts, write_slot, o, kc, vc, dims);
  } else {
    DispatchHeadDim<bf16_bits, bf16_bits>(pool, q, k_new, v_new, starts, write_slot, o, kc, vc,
                                          dims);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MemtrainDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k_new
                                  .Arg<ffi::AnyBuffer>()  // v_new
                                  .Arg<ffi::AnyBuffer>()  // k_t (aliased to the k_t result)
                                  .Arg<ffi::AnyBuffer>()  // v (aliased to the v result)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // start
                                  .Arg<ffi::Buffer<ffi::S32>>()  // slot
                                  .Ret<ffi::AnyBuffer>()  // out
                                  .Ret<ffi::AnyBuffer>()  // k_t
                                  .Ret<ffi::AnyBuffer>());  // v
