// Small-batch float32 matmul against weights packed in column panels, on XLA's thread pool.
//
// A decode step multiplies a few rows (the batch) by every weight matrix once. XLA:CPU's matmul
// repacks the weight on every call (Eigen's GEMM packs both operands), so at a few rows a step
// reads and writes each weight about twice. Here the weight is packed once per set of parameters
// (`memtrain_jax.kernels.packed_matmul.pack`) into panels of kPanel output columns (two native
// vectors: 32 with AVX-512, 16 with AVX2) stored k-major:
//   x      [M, K]           float32
//   panels [P, K, kPanel]   float32; panels[p, k, j] = w[kPanel p + j, k], zero past N
//   y      [M, N]           float32, y = x . w^T
// A panel is one contiguous stream: for each k, its weights are two vectors, and a block of rows
// of x is multiplied into rows x kPanel sums held in registers (an outer product per k). The
// block is as many rows as the registers hold beside the two weight vectors: 12 with AVX-512's 32
// registers (24 sums; 12 beat 8, 10, 14 and 16: SmolLM2 decode matmuls at 16 rows 34 against 39
// ms a step, 32 rows 44 against 48), 6 with AVX2's 16 (12 sums, the classic 6 x 16 sgemm
// block). The panel is read from memory for the first row block and from cache for the others;
// panels are shared out over the threads. Prefill's thousands of rows are cut into chunks that
// fit in L2 and each chunk runs through the panels, instead of every panel streaming all rows
// from memory (SmolLM2 prefill of 32 x 128 tokens on an AVX2 EPYC: 7.6 against XLA's 8.9 s).
// Each output element is one float32 sum over k in order, so results do not depend on the
// number of threads or on the tiling.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cpu_parallel.h"
#include "cpu_vectors.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using memtrain::kLanes;
using memtrain::LoadVec;
using memtrain::Vec;

constexpr int64_t kPanel = 2 * kLanes;  // output columns per panel: two vectors
constexpr int kMaxRows = memtrain::kVectorRegisters >= 32 ? 12 : 6;  // rows per register block
constexpr int64_t kPrefetchBytes = 8192;

// y[0:kRows, 0:columns] = x[0:kRows, :] . panel, for kRows rows of x (stride k) and one panel.
template <int kRows>
void RowsTimesPanel(const float* x, int64_t k, const float* panel, float* y, int64_t y_stride,
                    int64_t columns) {
  Vec sums[kRows][2] = {};
  for (int64_t i = 0; i < k; ++i) {
    // The step's lines of weights 8 KiB ahead, into the next panel near the end, to L2 only:
    // the hardware prefetcher alone stops at page boundaries, and prefetches into L1 hold the
    // few L1 miss buffers (SmolLM2's decode matmuls at 4 rows with AVX-512: 29 ms a step without
    // prefetching, 24 ms into L1 4 KiB ahead, 21 ms like this; 8 rows: 28 and 25 ms for the last
    // two). Prefetching past the last panel is harmless.
    const char* ahead = reinterpret_cast<const char*>(panel + i * kPanel) + kPrefetchBytes;
    for (int64_t b = 0; b < kPanel * int64_t{sizeof(float)}; b += 64) {
      __builtin_prefetch(ahead + b, 0, 1);
    }
    const Vec w0 = LoadVec(panel + i * kPanel), w1 = LoadVec(panel + i * kPanel + kLanes);
    for (int r = 0; r < kRows; ++r) {
      const float xr = x[r * k + i];
      sums[r][0] += xr * w0;
      sums[r][1] += xr * w1;
    }
  }
  for (int r = 0; r < kRows; ++r) {
    if (columns == kPanel) {
      std::memcpy(y + r * y_stride, &sums[r][0], sizeof(Vec));
      std::memcpy(y + r * y_stride + kLanes, &sums[r][1], sizeof(Vec));
    } else {
      float full[kPanel];
      std::memcpy(full, &sums[r][0], sizeof(Vec));
      std::memcpy(full + kLanes, &sums[r][1], sizeof(Vec));
      std::memcpy(y + r * y_stride, full, columns * sizeof(float));
    }
  }
}

// Panels [first, last) for all m rows: row blocks of kMaxRows, then 8 (when smaller), 4, 2, 1.
void Panels(const float* x, int64_t m, int64_t k, const float* panels, int64_t n, float* y,
            int64_t first, int64_t last) {
  for (int64_t p = first; p < last; ++p) {
    const float* panel = panels + p * k * kPanel;
    const int64_t column = p * kPanel, columns = std::min(kPanel, n - column);
    int64_t r = 0;
    const auto blocks_of = [&](auto rows) {
      constexpr int kRows = decltype(rows)::value;
      for (; r + kRows <= m; r += kRows) {
        RowsTimesPanel<kRows>(x + r * k, k, panel, y + r * n + column, n, columns);
      }
    };
    blocks_of(std::integral_constant<int, kMaxRows>());
    if constexpr (kMaxRows > 8) blocks_of(std::integral_constant<int, 8>());
    blocks_of(std::integral_constant<int, 4>());
    blocks_of(std::integral_constant<int, 2>());
    blocks_of(std::integral_constant<int, 1>());
  }
}

// x up to this size is read by every piece whole: the decode case (SmolLM2 at 64 rows of 1536
// floats is 384 KiB), where each panel is streamed from memory once for all rows.
constexpr int64_t kWholeRowsBytes = int64_t{512} << 10;

// Rows of x per tile when there are more (prefill): as many whole register blocks as fit in
// about 192 KiB, a share of L2 beside the panel being read, so that a tile's rows stay in cache
// while it runs through the panels instead of being streamed from memory once per panel.
int64_t RowsPerChunk(int64_t k) {
  constexpr int64_t kChunkBytes = int64_t{192} << 10;
  const int64_t blocks = kChunkBytes / (std::max<int64_t>(k, 1) * sizeof(float) * kMaxRows);
  return std::max<int64_t>(blocks, 1) * kMaxRows;
}

ffi::Error PackedMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> panels, ffi::Result<ffi::Buffer<ffi::F32>> y) {
  const auto xd = x.dimensions(), pd = panels.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || pd.size() != 3 || yd.size() != 2 || pd[2] != kPanel || pd[1] != xd[1] ||
      yd[0] != xd[0] || yd[1] > pd[0] * kPanel || yd[1] <= (pd[0] - 1) * kPanel) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "memtrain packed matmul: expected x [M, K], panels [ceil(N/" +
                          std::to_string(kPanel) + "), K, " + std::to_string(kPanel) +
                          "], y [M, N]");
  }
  const int64_t m = xd[0], k = xd[1], n = yd[1], num_panels = pd[0];
  const float* x_data = x.typed_data();
  const float* panel_data = panels.typed_data();
  float* y_data = y->typed_data();
  if (m * k * int64_t{sizeof(float)} <= kWholeRowsBytes) {
    // About 256 KiB of weights per piece: enough work to pay for handing it to another thread.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (k * kPanel));
    memtrain::ParallelFor(pool, num_panels, grain,
                          [=](int64_t first, int64_t last) {
                            Panels(x_data, m, k, panel_data, n, y_data, first, last);
                          });
    return ffi::Error::Success();
  }
  // Many rows (prefill): tiles of chunk_rows rows x a group of panels, each tile's rows
  // multiplied into every panel of its group while they sit in L2. Groups only split the panels
  // when there are too few row chunks to keep the threads busy.
  const int64_t chunk_rows = RowsPerChunk(k);
  const int64_t chunks = (m + chunk_rows - 1) / chunk_rows;
  const int64_t groups = std::min<int64_t>(
      num_panels, (4 * std::max<int64_t>(pool.num_threads(), 1) + chunks - 1) / chunks);
  const int64_t panels_per_group = (num_panels + groups - 1) / groups;
  memtrain::ParallelFor(pool, chunks * groups, /*grain=*/1,
                        [=](int64_t first, int64_t last) {
                          for (int64_t tile = first; tile < last; ++tile) {
                            const int64_t row = (tile / groups) * chunk_rows;
                            const int64_t panel = (tile % groups) * panels_per_group;
                            Panels(x_data + row * k, std::min(chunk_rows, m - row), k,
                                   panel_data, n, y_data + row * n, panel,
                                   std::min(num_panels, panel + panels_per_group));
                          }
                        });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MemtrainPackedMatmul, PackedMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // panels
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y

// The panel width this build packs for (`packed_matmul.pack` asks, through ctypes).
extern "C" int64_t MemtrainPackedMatmulPanel() { return kPanel; }
