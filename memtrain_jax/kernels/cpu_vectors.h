// The host's native float vector, for the kernels in this directory (GCC/Clang vector extensions).
//
// The kernels keep their sums in vector registers, so their blocking follows the target's vector
// width and register count: a vector wider than the hardware's is split by the compiler, and sums
// that do not fit in the registers are spilled to the stack on every step (the AVX-512 blocking
// compiled for AVX2 made the packed matmul 4-20x slower than XLA's on an AMD EPYC).
#ifndef MEMTRAIN_JAX_KERNELS_CPU_VECTORS_H_
#define MEMTRAIN_JAX_KERNELS_CPU_VECTORS_H_

#include <cstdint>
#include <cstring>

namespace memtrain {

#if defined(__AVX512F__)
constexpr int kLanes = 16;            // floats per vector register
constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kVectorRegisters = 16;
#elif defined(__aarch64__)
constexpr int kLanes = 4;
constexpr int kVectorRegisters = 32;
#else
constexpr int kLanes = 4;
constexpr int kVectorRegisters = 16;
#endif

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace memtrain

#endif  // MEMTRAIN_JAX_KERNELS_CPU_VECTORS_H_
