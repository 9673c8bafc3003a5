// Threads for the kernels: contiguous ranges, the calling thread doing the first share and
// the threads of a process-wide pool (WorkerPool) the others; no thread for a single
// worker. Or, once a host's OpenMP runtime is handed over (set_thread_team), the workers
// run on that runtime's thread team instead of threads of their own.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "handover.hpp"

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
// CPU of the process but the caller's starts elsewhere; a pool thread keeps off the CPU of
// the caller of its current job (measured with the pool: a woken thread left free often
// joined the caller's CPU, and S2 on 2 threads varied from 150 to 180 ms a step). No-op
// where the caller's CPU is unknown or is the only one allowed.
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
  // A placement that was never applied (a new pool thread's).
  static WorkerPlacement none() { return WorkerPlacement(0); }
  // Called by a worker thread when it starts (a pool thread: when its job's placement
  // differs from the one it has).
  void apply() const {
#if defined(__linux__)
    if (usable_) sched_setaffinity(0, sizeof(others_), &others_);  // this thread only
#endif
  }
  // Whether two placements keep a thread on the same CPUs.
  bool operator==(const WorkerPlacement& o) const {
#if defined(__linux__)
    return usable_ == o.usable_ && (!usable_ || CPU_EQUAL(&others_, &o.others_));
#else
    return usable_ == o.usable_;
#endif
  }
 private:
#if defined(__linux__)
  cpu_set_t others_{};
#endif
  bool usable_ = false;
  explicit WorkerPlacement(int) {}
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
inline HandedOver<ThreadTeam>& team_slot() {
  static HandedOver<ThreadTeam> t;
  return t;
}
}  // namespace detail

// Hands over (or, with null pointers, withdraws) a host's OpenMP runtime; `name` says which
// for build_info. Kernel calls already running keep what they started with.
inline void set_thread_team(const ThreadTeam& team) {
  ThreadTeam kept = team.usable() ? team : ThreadTeam{};
  kept.owner = ThreadTeam::current_process();
  detail::team_slot().set(kept);
}

inline ThreadTeam current_thread_team() { return detail::team_slot().get(); }

// How many run_workers calls have run on a host's team (tests check the hand-off with it).
inline std::atomic<long long>& team_calls() {
  static std::atomic<long long> n{0};
  return n;
}

// The CPU's hint that this thread is in a spin-wait loop.
inline void cpu_relax() {
#ifdef FASTRNN_HAVE_MXCSR
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// A pause in a spin-wait loop: cpu_relax, and every 256th call a yield of the thread, so
// that a spin on an oversubscribed machine lets the thread it waits for run.
inline void spin_pause(unsigned& calls) {
  if ((++calls & 255u) == 0) return std::this_thread::yield();
  cpu_relax();
}

// A sequence of tasks that two threads share in order, one task at a time: a worker that
// produces their inputs (publish(n): inputs of the first n "items" ready) and a helper that
// runs them as soon as they are ready (help). The worker runs a task itself when it needs
// its result and no one is running one (wait_done), so nothing depends on the two threads
// running at the same time: on a team with fewer threads than workers, where the helper
// runs after the worker, the worker has done every task by then. Whoever runs task s runs
// it after task s - 1 finished: the same order, the same sums, as one thread. A task's
// exception is kept and thrown by the worker; fail() (the worker's own exception) makes a
// waiting helper give up.
class TaskRelay {
 public:
  using ready_fn = bool (*)(const void* owner, std::ptrdiff_t task, std::ptrdiff_t published);
  using run_fn = void (*)(void* owner, std::ptrdiff_t task);

  // The tasks 0..total-1 of `owner`: ready(owner, s, published) says whether task s may
  // run once `published` items are published; run(owner, s) runs it. Called by the worker
  // before it publishes anything; the helper starts running tasks after this.
  void attach(void* owner, std::ptrdiff_t total, ready_fn ready, run_fn run) {
    owner_ = owner;
    total_ = total;
    ready_ = ready;
    run_ = run;
    attached_.store(true, std::memory_order_release);
  }
  void publish(std::ptrdiff_t items) { published_.store(items, std::memory_order_release); }
  void fail() { failed_.store(true, std::memory_order_release); }

  // The worker: returns once task s has run (running tasks itself while it waits).
  void wait_done(std::ptrdiff_t s) {
    unsigned calls = 0;
    while (done_.load(std::memory_order_acquire) <= s) {
      if (failed_.load(std::memory_order_acquire)) rethrow();
      if (!try_run()) spin_pause(calls);
    }
    if (failed_.load(std::memory_order_acquire)) rethrow();
  }
  // The helper: runs tasks as they become ready until all ran or the worker failed.
  void help() {
    unsigned calls = 0;
    while (!attached_.load(std::memory_order_acquire)) {
      if (failed_.load(std::memory_order_acquire)) return;
      spin_pause(calls);
    }
    while (done_.load(std::memory_order_acquire) < total_ &&
           !failed_.load(std::memory_order_acquire))
      if (!try_run()) spin_pause(calls);
  }

 private:
  // Runs the next task if it is ready and no one runs one; whether it did.
  bool try_run() {
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    const std::ptrdiff_t s = done_.load(std::memory_order_relaxed);
    const bool go = s < total_ && !failed_.load(std::memory_order_relaxed) &&
                    ready_(owner_, s, published_.load(std::memory_order_acquire));
    if (go) {
      try {
        run_(owner_, s);
      } catch (...) {
        error_ = std::current_exception();
        failed_.store(true, std::memory_order_release);
      }
      done_.store(s + 1, std::memory_order_release);
    }
    busy_.store(false, std::memory_order_release);
    return go;
  }
  [[noreturn]] void rethrow() {
    unsigned calls = 0;
    while (busy_.load(std::memory_order_acquire)) spin_pause(calls);  // a task still running
    if (error_) std::rethrow_exception(error_);
    throw std::runtime_error("fastrnn: a helper thread's task failed");
  }
  void* owner_ = nullptr;
  std::ptrdiff_t total_ = 0;
  ready_fn ready_ = nullptr;
  run_fn run_ = nullptr;
  std::atomic<std::ptrdiff_t> published_{0}, done_{0};
  std::atomic<bool> busy_{false}, failed_{false}, attached_{false};
  std::exception_ptr error_;
};

// [begin, end) of part i when n items are split into `parts` contiguous, balanced ranges.
inline std::pair<std::ptrdiff_t, std::ptrdiff_t> split_range(std::ptrdiff_t n, int parts, int i) {
  const std::ptrdiff_t base = n / parts, extra = n % parts;
  const std::ptrdiff_t begin = i * base + std::min<std::ptrdiff_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// The kernels' own worker threads: a process-wide pool whose threads outlive the calls
// (a kernel call runs run_workers two to four times; a new std::thread each time cost
// 30 to 50 us and arrived with cold caches). Idle threads spin for at most kSpin, then
// sleep on a condition variable: a short spin, so that they never hold a core the way
// PyTorch's OpenMP threads do (1 to 5 ms). One call at a time uses the pool; a call that
// finds it busy (another Python thread's kernel) starts threads of its own for that run.
// A forked child makes a pool of its own (the parent's threads do not exist there).
class WorkerPool {
 public:
  using job_fn = void (*)(void* data, int worker);
  static constexpr std::chrono::microseconds kSpin{50};

  // The pool of this process.
  static WorkerPool& instance() {
    static std::mutex m;
    static WorkerPool* pool = nullptr;
    std::lock_guard<std::mutex> lock(m);
    const long pid = ThreadTeam::current_process();
    if (pool == nullptr || pool->owner_ != pid) pool = new WorkerPool(pid);  // never freed:
    return *pool;  // its threads may still sleep in it at exit (or belong to the parent)
  }

  // Runs job(data, i) for i in 1..workers-1 on pool threads while the caller runs
  // run0(); false (nothing run) when another call holds the pool.
  template <class Run0>
  bool run(int workers, job_fn job, void* data, const WorkerPlacement& placement, Run0&& run0) {
    if (workers - 1 > max_threads()) return false;  // more than the machine runs at once
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    grow(workers - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = job;
      data_ = data;
      placement_ = &placement;
      remaining_.store(workers - 1, std::memory_order_relaxed);
      // the next generation and its worker count in one store: a thread that takes part
      // in no job reads both from one snapshot (with workers_ apart, it could pair an old
      // generation with a newer count and run a job twice)
      const std::uint64_t next = (state_.load(std::memory_order_relaxed) >> 16) + 1;
      state_.store(next << 16 | static_cast<std::uint64_t>(workers), std::memory_order_release);
    }
    start_.notify_all();
    run0();
    if (!spin_until([&] { return remaining_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
    }
    return true;
  }

 private:
  explicit WorkerPool(long owner) : owner_(owner) {}

  template <class Pred>
  static bool spin_until(Pred&& ready) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (int i = 0;; ++i) {
      if (ready()) return true;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
      cpu_relax();
    }
  }

  // The most threads the pool keeps: twice the hardware threads (a num_threads beyond
  // that starts threads of its own per run, as before the pool, instead of keeping them).
  static int max_threads() {
    static const int n = static_cast<int>(
        std::min(2u * std::max(1u, std::thread::hardware_concurrency()), 0xffffu));
    return n;
  }

  // Threads 1..n exist afterwards (thread k runs worker k of every job).
  void grow(int n) {
    while (static_cast<int>(threads_) < n) {
      const int k = static_cast<int>(++threads_);
      std::thread([this, k] { loop(k); }).detach();
    }
  }

  void loop(int k) {
    WorkerPlacement applied = WorkerPlacement::none();
    std::uint64_t seen = 0;
    for (;;) {
      const auto fresh = [&] { return state_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(m_);
        start_.wait(lock, fresh);
      }
      seen = state_.load(std::memory_order_acquire);
      if (k >= static_cast<int>(seen & 0xffff)) continue;  // a job with fewer workers
      if (!(*placement_ == applied)) {  // off this job's caller's CPU
        applied = *placement_;
        applied.apply();
      }
      job_(data_, k);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(m_);  // the caller may be about to wait
        done_.notify_one();
      }
    }
  }

  const long owner_;
  std::mutex busy_;  // held by the call using the pool
  std::mutex m_;
  std::condition_variable start_, done_;
  std::atomic<std::uint64_t> state_{0};  // generation << 16 | the job's worker count
  std::atomic<int> remaining_{0};
  std::size_t threads_ = 0;  // changed with busy_ held
  job_fn job_ = nullptr;
  void* data_ = nullptr;
  const WorkerPlacement* placement_ = nullptr;
};

// Run f(i) for i in 0..workers-1, worker 0 on the calling thread, the others on the host's
// team (set_thread_team), else on the WorkerPool, else (pool busy) on new threads kept off
// the caller's CPU (WorkerPlacement); every worker runs with the denormal mode
// `flush_denormals`. The first exception thrown by a worker is rethrown.
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
  const auto job = [](void* data, int i) { (*static_cast<decltype(body)*>(data))(i); };
  if (WorkerPool::instance().run(workers, job, &body, placement, [&] { body(0); })) {
    if (error) std::rethrow_exception(error);
    return;
  }
  std::vector<std::thread> threads;  // the pool is busy with another call
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
