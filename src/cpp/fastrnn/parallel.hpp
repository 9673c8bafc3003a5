// Threads for the kernels: contiguous ranges, one std::thread per extra worker, the
// calling thread doing the first share; no thread is created for a single worker.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FASTRNN_HAVE_MXCSR 1
#endif

namespace fastrnn {

// Flush-to-zero and denormals-are-zero for the lifetime of the guard, in this thread only;
// the caller's floating-point mode is restored on destruction.
class DenormalGuard {
 public:
  explicit DenormalGuard(bool enable) {
#ifdef FASTRNN_HAVE_MXCSR
    saved_ = _mm_getcsr();
    active_ = enable;
    if (enable) _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#else
    (void)enable;
#endif
  }
  ~DenormalGuard() {
#ifdef FASTRNN_HAVE_MXCSR
    if (active_) _mm_setcsr(saved_);
#endif
  }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
#ifdef FASTRNN_HAVE_MXCSR
  unsigned saved_ = 0;
  bool active_ = false;
#endif
};

// Keeps the calling thread's workers off the CPU the caller runs on. Linux places a new
// thread next to its creator and, for a run of a few milliseconds, often leaves it there:
// measured on this project's 2-core machine, one spawn in four shared the caller's CPU for
// the whole run (2 threads then took exactly as long as 1). A worker that is allowed every
// CPU of the process but the caller's starts elsewhere; nothing outlives the worker, which
// ends with the call. No-op where the caller's CPU is unknown or is the only one allowed.
class WorkerPlacement {
 public:
  WorkerPlacement() {
#if defined(__linux__)
    const int cpu = sched_getcpu();
    if (cpu < 0 || sched_getaffinity(0, sizeof(others_), &others_) != 0) return;
    if (!CPU_ISSET(cpu, &others_)) return;
    CPU_CLR(cpu, &others_);
    usable_ = CPU_COUNT(&others_) > 0;
#endif
  }
  // Called by a worker thread when it starts.
  void apply() const {
#if defined(__linux__)
    if (usable_) sched_setaffinity(0, sizeof(others_), &others_);  // this thread only
#endif
  }

 private:
#if defined(__linux__)
  cpu_set_t others_{};
#endif
  bool usable_ = false;
};

// [begin, end) of part i when n items are split into `parts` contiguous, balanced ranges.
inline std::pair<std::ptrdiff_t, std::ptrdiff_t> split_range(std::ptrdiff_t n, int parts, int i) {
  const std::ptrdiff_t base = n / parts, extra = n % parts;
  const std::ptrdiff_t begin = i * base + std::min<std::ptrdiff_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// Run f(i) for i in 0..workers-1, worker 0 on the calling thread, the others on new
// threads kept off the caller's CPU (WorkerPlacement); every worker runs with the denormal
// mode `flush_denormals`. The first exception thrown by a worker is rethrown.
template <class F>
void run_workers(int workers, bool flush_denormals, F&& f) {
  if (workers <= 1) {
    DenormalGuard guard(flush_denormals);
    f(0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  const WorkerPlacement placement;
  auto body = [&](int i) {
    if (i > 0) placement.apply();
    try {
      DenormalGuard guard(flush_denormals);
      f(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  try {
    for (int i = 1; i < workers; ++i) threads.emplace_back(body, i);
  } catch (...) {
    for (auto& t : threads) t.join();
    throw;
  }
  body(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fastrnn
