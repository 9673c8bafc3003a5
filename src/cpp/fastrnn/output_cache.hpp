// Memory for the kernels' outputs, with the large blocks kept between calls: header-only, no
// Python types. The bindings (kernel_bindings.cpp) place every output array in a block of
// the process's one OutputCache and give the block back when NumPy frees the array.
//
// Why: a training step allocates the same large outputs every time (hs, the saved gates,
// dx: 234 MB a step for an LSTM at S2, H = 64, B = 16, T = 10000), and fresh memory from
// the OS costs a page fault and the kernel zeroing the page at its first touch. Measured
// on a 2-core AMD EPYC (Zen 3; transparent huge pages on madvise, which NumPy asks for
// from 4 MB): the kernel's clear_page was 23% of that LSTM's training forward (perf), which
// took 253 ms against 159 for the inference forward that saves nothing. A block kept here
// is written again without either.
//
// The same holds for the mid-size outputs of a training step at moderate T (hs and the
// saved extra values of a char-LM batch, H = 128, B = 32, T = 64: 1 MB each): glibc serves
// them from the top of its heap and trims the heap when they are freed, so every call
// faulted them in again: 480 page faults a call, and that GRU's training forward took 7.4
// ms, 4.6 ms once they were kept here, against 4.1 ms for its inference forward (Zen 3).
//
// Rules: blocks under kKeepBytes come from the C allocator (64-byte aligned) and go back
// to it (malloc reuses those from its free lists); a kept block has a whole number of
// kKeepBytes units, or of 2 MB pages from kLargeBytes (so a block fits every request of its
// size class; a large one asked for with MADV_HUGEPAGE like NumPy's own), and goes back to
// the cache, newest kept, oldest freed first once the cache holds more than its limit
// (kDefaultLimit, or set_limit; 0 keeps nothing). A request takes a kept block of exactly
// its rounded size, else a new one: a training loop asks for the same sizes at every step.
// The cache holds only what the arrays freed, so the memory in use at its peak does not
// grow; what it holds between calls stays with the process until clear() or set_limit(0).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastrnn {

struct OutputCacheStats {
  std::size_t limit = 0;   // bytes it may hold
  std::size_t held = 0;    // bytes it holds
  std::size_t blocks = 0;  // blocks it holds
  std::size_t hits = 0;    // large requests served from it
  std::size_t misses = 0;  // large requests that took new memory
};

class OutputCache {
 public:
  static constexpr std::size_t kAlign = 64;
  static constexpr std::size_t kKeepBytes = std::size_t(64) << 10;
  static constexpr std::size_t kLargeBytes = std::size_t(2) << 20;
  static constexpr std::size_t kDefaultLimit = std::size_t(1) << 30;

  // The process's cache. Never destroyed: arrays may be freed after static destructors ran.
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  // The capacity a request of `bytes` gets: whole kAlign units, whole kKeepBytes units
  // from kKeepBytes, whole 2 MB pages from kLargeBytes.
  static std::size_t capacity_for(std::size_t bytes) {
    const std::size_t unit =
        bytes >= kLargeBytes ? kLargeBytes : bytes >= kKeepBytes ? kKeepBytes : kAlign;
    return (std::max<std::size_t>(bytes, 1) + unit - 1) / unit * unit;
  }

  // A block of capacity_for(bytes), kAlign-aligned (2 MB-aligned if large); throws
  // std::bad_alloc when there is no memory. Its content is undefined.
  void* acquire(std::size_t bytes) {
    const std::size_t capacity = capacity_for(bytes);
    if (capacity >= kKeepBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
        if (it->capacity != capacity) continue;
        void* p = it->p;
        blocks_.erase(std::next(it).base());
        held_ -= capacity;
        ++hits_;
        if (poison_) std::memset(p, 0xff, capacity);
        return p;
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(capacity >= kLargeBytes ? kLargeBytes : kAlign, capacity);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (capacity >= kLargeBytes) madvise(p, capacity, MADV_HUGEPAGE);  // a hint: may fail
#endif
    return p;
  }

  // Gives back a block acquire(bytes) returned, with the same bytes.
  void release(void* p, std::size_t bytes) {
    const std::size_t capacity = capacity_for(bytes);
    if (capacity < kKeepBytes) return std::free(p);
    std::vector<void*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.push_back({p, capacity});
      held_ += capacity;
      shrink(freed);
    }
    for (void* q : freed) std::free(q);
  }

  // Sets the most it may hold (bytes) and frees the oldest blocks beyond it; returns the
  // previous limit.
  std::size_t set_limit(std::size_t limit) {
    std::vector<void*> freed;
    std::size_t previous;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      previous = limit_;
      limit_ = limit;
      shrink(freed);
    }
    for (void* q : freed) std::free(q);
    return previous;
  }

  void clear() { set_limit(set_limit(0)); }

  // Fill every block taken from the cache with 0xff bytes (NaN in float and double), so
  // that a kernel that failed to write part of an output shows it (tests).
  void set_poison(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    poison_ = on;
  }

  OutputCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return {limit_, held_, blocks_.size(), hits_, misses_};
  }

 private:
  struct Block {
    void* p;
    std::size_t capacity;
  };
  OutputCache() = default;
  // the oldest blocks out until held_ <= limit_ (into `freed`, to free outside the lock)
  void shrink(std::vector<void*>& freed) {
    std::size_t drop = 0;
    while (held_ > limit_ && drop < blocks_.size()) {
      held_ -= blocks_[drop].capacity;
      freed.push_back(blocks_[drop++].p);
    }
    blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(drop));
  }

  mutable std::mutex mutex_;
  std::vector<Block> blocks_;  // oldest first
  std::size_t limit_ = kDefaultLimit, held_ = 0, hits_ = 0, misses_ = 0;
  bool poison_ = false;
};

}  // namespace fastrnn
