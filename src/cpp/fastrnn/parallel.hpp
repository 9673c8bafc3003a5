// Threads for the kernels: contiguous ranges, one std::thread per extra worker, the
// calling thread doing the first share; no thread is created for a single worker. Or, once
// a host's OpenMP runtime is handed over (set_thread_team), the workers run on that
// runtime's thread team instead of threads of their own.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define FASTRNN_HAVE_GETPID 1
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

// A host's OpenMP runtime, through the GNU OpenMP ABI (libgomp's GOMP_parallel; LLVM's
// libomp and Intel's libiomp5 export it too). PyTorch's intra-op threads are such a team,
// and they spin for milliseconds after every parallel torch op before they sleep: threads
// of our own beside them oversubscribe the cores, and a kernel call right after a torch op
// ran 3x slower on 2 threads than alone (measured on this project's 2-core machine, GRU
// forward at the char-LM shape). On the host's team the same threads do our work instead.
// The split of the work is the same either way (worker i, i = 0..workers-1, thread 0 the
// caller), so results have the same bits. A forked child never uses the team it inherits
// (GNU OpenMP's pool is not fork-safe: its threads do not exist in the child, which would
// wait for them forever); it runs threads of its own.
struct ThreadTeam {
  using parallel_fn = void (*)(void (*fn)(void*), void* data, unsigned num_threads,
                               unsigned flags);
  using index_fn = int (*)();
  parallel_fn parallel = nullptr;  // GOMP_parallel
  index_fn thread_num = nullptr;   // omp_get_thread_num
  index_fn num_threads = nullptr;  // omp_get_num_threads
  std::string name = "own threads";
  long owner = 0;  // the process that handed the team over
  bool usable() const { return parallel && thread_num && num_threads; }
  bool usable_here() const { return usable() && owner == current_process(); }
  static long current_process() {
#ifdef FASTRNN_HAVE_GETPID
    return static_cast<long>(getpid());
#else
    return 0;
#endif
  }
};

namespace detail {
inline std::mutex& team_mutex() {
  static std::mutex m;
  return m;
}
inline ThreadTeam& team_slot() {
  static ThreadTeam t;
  return t;
}
}  // namespace detail

// Hands over (or, with null pointers, withdraws) a host's OpenMP runtime; `name` says which
// for build_info. Kernel calls already running keep what they started with.
inline void set_thread_team(const ThreadTeam& team) {
  std::lock_guard<std::mutex> lock(detail::team_mutex());
  detail::team_slot() = team.usable() ? team : ThreadTeam{};
  detail::team_slot().owner = ThreadTeam::current_process();
}

inline ThreadTeam current_thread_team() {
  std::lock_guard<std::mutex> lock(detail::team_mutex());
  return detail::team_slot();
}

// How many run_workers calls have run on a host's team (tests check the hand-off with it).
inline std::atomic<long long>& team_calls() {
  static std::atomic<long long> n{0};
  return n;
}

// [begin, end) of part i when n items are split into `parts` contiguous, balanced ranges.
inline std::pair<std::ptrdiff_t, std::ptrdiff_t> split_range(std::ptrdiff_t n, int parts, int i) {
  const std::ptrdiff_t base = n / parts, extra = n % parts;
  const std::ptrdiff_t begin = i * base + std::min<std::ptrdiff_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// Run f(i) for i in 0..workers-1, worker 0 on the calling thread, the others on the host's
// team (set_thread_team) or else on new threads kept off the caller's CPU
// (WorkerPlacement); every worker runs with the denormal mode `flush_denormals`. The first
// exception thrown by a worker is rethrown.
template <class F>
void run_workers(int workers, bool flush_denormals, F&& f) {
  if (workers <= 1) {
    DenormalGuard guard(flush_denormals);
    f(0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  const ThreadTeam team = current_thread_team();
  const bool on_team = team.usable_here();
  const WorkerPlacement placement;
  auto body = [&](int i) {
    if (i > 0 && !on_team) placement.apply();
    try {
      DenormalGuard guard(flush_denormals);
      f(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  if (on_team) {
    // The team may have fewer threads than asked for (nested in a parallel region, or a
    // thread limit): its thread k then runs workers k, k + size, ...
    struct Shared {
      decltype(body)* run;
      const ThreadTeam* team;
      int workers;
    } shared{&body, &team, workers};
    team.parallel(
        [](void* data) {
          const auto* s = static_cast<const Shared*>(data);
          const int size = std::max(1, s->team->num_threads());
          for (int i = s->team->thread_num(); i < s->workers; i += size) (*s->run)(i);
        },
        &shared, static_cast<unsigned>(workers), 0);
    team_calls().fetch_add(1, std::memory_order_relaxed);
    if (error) std::rethrow_exception(error);
    return;
  }
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
