// Work sharing on XLA:CPU's intra-op thread pool, for the kernels in this directory.
#ifndef MEMTRAIN_JAX_KERNELS_CPU_PARALLEL_H_
#define MEMTRAIN_JAX_KERNELS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace memtrain {

// Calls body(begin, end) over [0, items) in pieces of up to `grain` items, on the calling thread
// and on the pool's threads. Pieces are claimed one at a time, so uneven pieces balance. The
// caller works too and then waits only for pieces already claimed: the call finishes even when
// every pool thread is busy elsewhere. The state is shared because a scheduled task may start
// after the call has returned; it then finds nothing left to claim and never touches `body`'s
// captures.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t items, int64_t grain, const Body& body) {
  struct State {
    explicit State(const Body& b) : body(b) {}
    Body body;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  grain = std::max<int64_t>(grain, 1);
  auto state = std::make_shared<State>(body);
  auto work = [items, grain](State& s) {
    for (int64_t begin; (begin = s.next.fetch_add(grain)) < items;) {
      const int64_t end = std::min(begin + grain, items);
      s.body(begin, end);
      s.finished.fetch_add(end - begin, std::memory_order_release);
    }
  };
  const int64_t pieces = (items + grain - 1) / grain;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), pieces) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, work] { work(*state); });
  work(*state);
  while (state->finished.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

}  // namespace memtrain

#endif  // MEMTRAIN_JAX_KERNELS_CPU_PARALLEL_H_
