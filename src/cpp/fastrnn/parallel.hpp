// Threads for the kernels: contiguous ranges, one std::thread per extra worker, the
// calling thread doing the first share; no thread is created for a single worker.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

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

// [begin, end) of part i when n items are split into `parts` contiguous, balanced ranges.
inline std::pair<std::ptrdiff_t, std::ptrdiff_t> split_range(std::ptrdiff_t n, int parts, int i) {
  const std::ptrdiff_t base = n / parts, extra = n % parts;
  const std::ptrdiff_t begin = i * base + std::min<std::ptrdiff_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// Run f(i) for i in 0..workers-1, worker 0 on the calling thread; every worker runs with
// the denormal mode `flush_denormals`. The first exception thrown by a worker is rethrown.
template <class F>
void run_workers(int workers, bool flush_denormals, F&& f) {
  if (workers <= 1) {
    DenormalGuard guard(flush_denormals);
    f(0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto body = [&](int i) {
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
