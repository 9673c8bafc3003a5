// Large products through an optimized BLAS handed over at run time: header-only, no Python
// types, no link-time dependency. The Python adapter (backends/cpp_backend.py) finds the
// Fortran-ABI sgemm/dgemm that SciPy exports (scipy.linalg.cython_blas) and the thread
// setters of the OpenBLAS behind them, and calls set_blas() once at import; with no
// functions set (or any one missing) every product stays on the in-house kernels. Either
// integer interface: LP64 (32-bit int arguments, SciPy's scipy_sgemm_) or ILP64 (64-bit,
// NumPy's own OpenBLAS, scipy_sgemm_64_ in numpy.libs): BlasFunctions::int64 says which
// (false unless the adapter says it hands over ILP64 functions). Measured (float32, cpp
// train step, interleaved in one process, 7 rounds, loaded 2-core Xeon, SkylakeX kernels):
// NumPy's OpenBLAS 0.3.31 ran S4 rnn 1.31x (1 thread) and 1.33x (2 threads) faster than
// SciPy's 0.3.30, S3 lstm 1.08x.
//
// Threading model: the kernels' own workers (parallel.hpp) call BLAS, each for its share
// (the forward's rows of the input projection, the backward's blocks of steps), with
// OpenBLAS's own threading set to 1 for as long as any kernel call that uses BLAS runs
// (BlasSingleThreaded: the first such call saves OpenBLAS's thread count and sets 1, the
// last one to finish restores it). So the cores in use are exactly the kernels'
// num_threads, never num_threads times BLAS's threads. Chosen over calling the big products
// from the calling thread with BLAS threads = num_threads because it needs no change to the
// workers' structure (no barrier between the time loops and the block products, which run
// inside each worker's backward loop); the alternative was not measured (the shared
// 2-core machine gave no stable 2-thread timings). SciPy's OpenBLAS is a
// separate library from NumPy's, so NumPy's thread setting is never touched; a SciPy BLAS
// call from another Python thread during a kernel runs single-threaded.
//
// Which products go to BLAS (use_blas): those with at least kBlasMinFlops multiply-adds and
// every dimension at least kBlasMinDim; the per-step recurrent product (which the in-house
// kernel runs with W_hh packed once per call) by step_uses_blas; every product when the
// BLAS's kernels are far wider than the module's (blas_takes_all).
// Smaller ones stay on the in-house panel kernels (small_gemm.hpp) or Eigen; see the
// measurements beside the constants.
#pragma once

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "handover.hpp"

namespace fastrnn {

using Index = std::ptrdiff_t;

using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const float*, const float*, const int*, const float*, const int*,
                          const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const double*, const double*, const int*, const double*, const int*,
                          const double*, double*, const int*);
// The same functions with the ILP64 interface (64-bit integer arguments).
using sgemm64_fn = void (*)(const char*, const char*, const std::int64_t*, const std::int64_t*,
                            const std::int64_t*, const float*, const float*, const std::int64_t*,
                            const float*, const std::int64_t*, const float*, float*,
                            const std::int64_t*);
using dgemm64_fn = void (*)(const char*, const char*, const std::int64_t*, const std::int64_t*,
                            const std::int64_t*, const double*, const double*,
                            const std::int64_t*, const double*, const std::int64_t*,
                            const double*, double*, const std::int64_t*);
using get_threads_fn = int (*)();
using set_threads_fn = void (*)(int);

// With int64 set, sgemm and dgemm hold the addresses of ILP64 functions (sgemm64_fn,
// dgemm64_fn) and are called through those types.
struct BlasFunctions {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
  get_threads_fn get_threads = nullptr;
  set_threads_fn set_threads = nullptr;
  bool int64 = false;  // ILP64: 64-bit integer arguments
  // How wide the BLAS's own kernels run, in the modules' terms (0 generic, 1 avx2, 2
  // avx512): the level of its kernels as the adapter reads it off OpenBLAS's core name (0 if
  // unknown), AVX-512 kernels counting as avx2 on a CPU that runs 512-bit vectors as two
  // 256-bit halves (AMD's Zen 4), where they do no more multiply-adds a cycle than AVX2
  // ones (fastrnn._sysinfo.blas_width_isa).
  int level = 0;
  std::string name = "none: no BLAS handed over";
  bool usable() const { return sgemm && dgemm && get_threads && set_threads; }
  // The largest dimension the integer interface takes.
  std::int64_t max_dim() const { return int64 ? INT64_MAX : INT_MAX; }
};

namespace detail {
inline HandedOver<BlasFunctions>& blas_slot() {
  static HandedOver<BlasFunctions> f;
  return f;
}
}  // namespace detail

// Hands over (or, with null pointers, withdraws) the BLAS functions; `name` describes them
// for build_info. Kernel calls already running keep the functions they started with.
inline void set_blas(BlasFunctions f) {
  if (!f.usable() && f.name.rfind("none", 0) != 0) f.name = "none: " + f.name;
  detail::blas_slot().set(f);
}

// A copy of the current functions: a kernel call takes one at its start.
inline BlasFunctions current_blas() { return detail::blas_slot().get(); }

// Multiply-adds from which a product goes to BLAS, and the smallest dimension it may have.
// Measured (float32, 1 thread, AVX-512 kernels, process CPU time): OpenBLAS's sgemm packs
// both operands on every call; at S2 (D=32, H=64, blocks of 512 columns: 2^23
// multiply-adds) the backward ran 1.3x slower with BLAS than with the in-house panel
// kernels, at S3 (D=128, H=256; lstm blocks 2^27) 1.17x faster, at S3 rnn (2^25) the same.
// Lower levels hand over smaller products, since OpenBLAS keeps its own widest kernels
// while the in-house ones narrow with the level. Measured on an AVX2-only AMD EPYC (Zen 3,
// OpenBLAS's Haswell kernels), S3 rnn (its D = 128 products, dW_ih and dx, are 2^24 per
// block), the backward alone, 1 thread, best of 5, alternating processes: avx2 378 to 431
// ms with them in-house, 337 to 385 through BLAS; generic (SSE2, about a third of
// OpenBLAS's rate, the table below) 694 to 722 ms in-house, 417 to 419 through BLAS from
// 2^21, against NumPy's 461 to 529.
#if defined(__AVX512F__)
constexpr Index kBlasMinFlops = Index(1) << 25;
#elif defined(__AVX2__)
constexpr Index kBlasMinFlops = Index(1) << 24;
#else
constexpr Index kBlasMinFlops = Index(1) << 21;
#endif
constexpr Index kBlasMinDim = 64;
// The per-step recurrent product (GH x H times nb columns, per step and worker), for which
// the in-house kernel keeps W_hh packed for the whole call (the backward's dh_prev = W_hh^T
// dA_t likewise): BLAS from kStepBlasMinFlops multiply-adds and kStepBlasMinColumns columns,
// thresholds that depend on the instruction-set level the module is compiled for
// (FASTRNN_ISA), because the in-house kernel is as wide as that level while OpenBLAS runs
// the widest kernels the CPU has whatever the level. OpenBLAS packs both operands on every
// call, which pays off only on wide products. Measured the product alone (float32, 1
// thread, thread CPU time, best of 7; Xeon with AVX-512 and a 2 MB L2; in-house with W_hh
// packed in panels (small_gemm.hpp) against NumPy's OpenBLAS 0.3.31 sgemm, GF/s):
//   shape (GH, H, nb)     avx512        avx2 (3 x 4 tile)   generic (SSE2)
//   512, 128, 32          132 / 66       87 / 67             28 / 63
//   2048, 512, 32         124 / 65       80 / 65             27 / 58
//   2048, 512, 48         127 / 84       81 / 82
//   2048, 512, 64         121 / 94       82 / 92
//   1024, 1024, 64 (S4)   127 / 92       82 / 93             28 / 86
//   1024, 4096, 64        116 / 92       75 / 89
//   2048, 512, 128        124 / 118      83 / 116
//   1024, 1024, 256       129 / 135      84 / 134
//   256, 64, 64           140 / 86       88 / 88             28 / 83
//   256, 64, 16                                              28 / 39
// So: avx512 from 256 columns, avx2 from 64 (48 is a tie), both from 2^24 / 2^21
// multiply-adds; generic from 2^21 at any width (measured against OpenBLAS's AVX-512
// kernels: on a CPU with no AVX2 OpenBLAS is slower too). Before W_hh was packed in panels
// (stored column-major, its rows 4*GH bytes apart), the in-house kernel fell to 49-64 GF/s
// at avx512 and 29-39 at avx2 once W_hh passed 2 MB (GH x H = 2048 x 512, 1024 x 1024), and
// BLAS took every product from 2^24 (avx512) or 2^21 multiply-adds.
// The avx2 column holds where OpenBLAS's kernels run twice as wide as the module's (the
// Xeon's AVX-512); where they run as wide, avx2 takes avx512's thresholds. Measured on an
// AMD EPYC Zen 4 (AVX-512 executed as two 256-bit halves; OpenBLAS's SkylakeX kernels, and
// its Haswell ones forced with OPENBLAS_CORETYPE), the avx2 module's training forward at D =
// 32, 1 thread, GF/s, two alternating runs, BLAS from 64 columns (SkylakeX / Haswell
// kernels) -> in-house below 256:
//   lstm H=512 B=64   50, 61 / 65, 70  ->  72, 83, 68, 69
//   rnn H=1024 B=64   63, 59 / 73, 78  ->  96, 68, 79, 75
//   lstm H=512 B=128  64, 66 / 76, 73  ->  81, 77, 72, 70
//   rnn H=256 B=64    61, 62 / 87, 69  ->  93, 78, 88, 72
// (the S4 training step forced to avx2 there went from 0.94x NumPy to 1.12x in the
// bench, docs/zen4/bench-avx2.json).
#if defined(__AVX512F__) || defined(__AVX2__)
constexpr Index kStepBlasMinFlops = Index(1) << 24;
constexpr Index kStepBlasMinColumns = 256;
#else
constexpr Index kStepBlasMinFlops = Index(1) << 21;
constexpr Index kStepBlasMinColumns = 1;
#endif
// the avx2 module's thresholds beside BLAS kernels that run twice as wide
constexpr Index kWiderStepBlasMinFlops = Index(1) << 21;
constexpr Index kWiderStepBlasMinColumns = 64;

// This module's instruction-set level in BlasFunctions::level's terms.
#if defined(__AVX512F__)
constexpr int kModuleLevel = 2;
#elif defined(__AVX2__)
constexpr int kModuleLevel = 1;
#else
constexpr int kModuleLevel = 0;
#endif

// Whether every product goes to BLAS, whatever its size: in the generic module (SSE2, no
// FMA) when the BLAS runs AVX2 + FMA kernels or wider, 4x the multiply-adds a cycle or
// more; the thresholds above were measured with the two as wide (or the BLAS at most 2x
// wider), where the in-house kernels' savings (no packing, no call) win on small products.
// That happens when a lower level is forced (FASTRNN_CPP_ISA=generic) on an AVX2 or
// AVX-512 CPU. Measured there (float32 train step, 1 thread, best of 5; Xeon with AVX-512,
// OpenBLAS's SkylakeX kernels, ms, thresholds above -> every product to BLAS): S1 rnn 10.0
// -> 6.0, S1 lstm 43.0 -> 28.0, S2 rnn 184 -> 93, S2 gru 554 -> 323, S3 and S4 within 2%
// (their products were BLAS's already); float64 S2 lstm 2067 -> 1216, S3 lstm 4393 ->
// 3965. The avx2 module against the same BLAS (2x wider) keeps the thresholds: every
// product to BLAS there made S2 lstm 376 -> 403 ms, S3 rnn 349 -> 395, S3 lstm 1406 ->
// 1687.
inline bool blas_takes_all(const BlasFunctions& f) {
  return f.usable() && kModuleLevel == 0 && f.level >= 1;
}

// Where BLAS takes all and its kernels run AVX2 + FMA (4x the generic module's
// multiply-adds a cycle), the per-step product still stays in-house below this many
// columns: at one to three columns OpenBLAS's call and packing cost more than the SSE2
// product. Measured (AMD EPYC Zen 3, OpenBLAS's Haswell kernels, FASTRNN_CPP_ISA=generic,
// float32 train step, D = 32, H = 64, T = 5000, 1 thread, us/step, rnn / lstm / gru,
// two alternating runs, every step product to BLAS -> in-house up to nb columns):
//   B=1 (S1, T = 10000)  2.94 / 16.2 / 9.24  ->  2.02 / 7.32 / 5.88
//   B=2   5.71, 5.25 / 19.3, 15.9 / 16.2, 16.6  ->  3.41, 4.12 / 12.1, 16.4 / 9.25, 8.39
//   B=3   8.42, 6.94 / 23.2, 22.8 / 17.0, 17.0  ->  6.47, 5.99 / 16.2, 22.0 / 13.9, 11.7
//   B=4   8.02, 5.58 / 20.5, 22.6 / 15.0, 21.2  ->  7.64, 7.84 / 27.9, 22.2 / 21.9, 23.1
//   B=8   9.96, 13.2 / 35.9, 35.5 / 33.7, 27.1  ->  15.6, 12.2 / 39.4, 49.0 / 41.3, 36.1
//   B=16 (S2)  17.5 / 68.8 / 53.0  ->  23.8 / 85.7 / 66.5
//   float64, B=1 (S1), two runs  5.42, 5.35 / 21.7, 23.4 / 14.2, 14.6  ->  3.74, 3.68 /
//                                12.9, 13.1 / 9.81, 9.14
// Beside AVX-512 kernels (8x) every product goes to BLAS, as measured on a Xeon (above).
constexpr Index kTakesAllStepBlasMinColumns = 4;  // BLAS from 4 columns

// Whether the per-step product of a worker's nb columns goes to BLAS (see above): where
// BLAS takes all, every one with at least kTakesAllStepBlasMinColumns columns (any beside
// AVX-512 kernels), else by the thresholds for BLAS kernels as wide as this module's, or for
// twice as wide ones (an avx2 module beside full-width AVX-512 kernels).
inline bool step_uses_blas(const BlasFunctions& f, Index GH, Index H, Index nb) {
  if (GH * H > INT_MAX || !f.usable()) return false;
  if (blas_takes_all(f)) return f.level >= 2 || nb >= kTakesAllStepBlasMinColumns;
  const bool wider = f.level > kModuleLevel;
  return nb >= (wider ? kWiderStepBlasMinColumns : kStepBlasMinColumns) &&
         GH * H * nb >= (wider ? kWiderStepBlasMinFlops : kStepBlasMinFlops);
}

inline bool use_blas(const BlasFunctions& f, Index m, Index n, Index k) {
  if (!f.usable()) return false;
  if (m > f.max_dim() || n > f.max_dim() || k > f.max_dim()) return false;
  if (blas_takes_all(f)) return m > 0 && n > 0 && k > 0;
  if (m < kBlasMinDim || n < kBlasMinDim || k < kBlasMinDim) return false;
  return m * n * k >= kBlasMinFlops;
}

// How many products have gone to BLAS in this module so far (for tests of the rules).
inline std::atomic<long long>& blas_calls() {
  static std::atomic<long long> n{0};
  return n;
}

namespace detail {
// One call of the Fortran-ABI gemm `fn` (of type Fn) with the integer type Int.
template <class Int, class Fn, class Stored, class T>
void call_gemm(Stored fn, char ta, char tb, Index m, Index n, Index k, T alpha, const T* A,
               Index lda, const T* B, Index ldb, T beta, T* C, Index ldc) {
  const Int M = Int(m), N = Int(n), K = Int(k), LA = Int(lda), LB = Int(ldb), LC = Int(ldc);
  reinterpret_cast<Fn>(fn)(&ta, &tb, &M, &N, &K, &alpha, A, &LA, B, &LB, &beta, C, &LC);
}
}  // namespace detail

// C = alpha op(A) op(B) + beta C, column-major (Fortran) conventions: op(X) = X for 'N',
// X^T for 'T'; A is m x k after op, B k x n, C m x n.
inline void gemm(const BlasFunctions& f, char ta, char tb, Index m, Index n, Index k, float alpha,
                 const float* A, Index lda, const float* B, Index ldb, float beta, float* C,
                 Index ldc) {
  blas_calls().fetch_add(1, std::memory_order_relaxed);
  if (f.int64)
    return detail::call_gemm<std::int64_t, sgemm64_fn>(f.sgemm, ta, tb, m, n, k, alpha, A, lda,
                                                       B, ldb, beta, C, ldc);
  detail::call_gemm<int, sgemm_fn>(f.sgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(const BlasFunctions& f, char ta, char tb, Index m, Index n, Index k,
                 double alpha, const double* A, Index lda, const double* B, Index ldb,
                 double beta, double* C, Index ldc) {
  blas_calls().fetch_add(1, std::memory_order_relaxed);
  if (f.int64)
    return detail::call_gemm<std::int64_t, dgemm64_fn>(f.dgemm, ta, tb, m, n, k, alpha, A, lda,
                                                       B, ldb, beta, C, ldc);
  detail::call_gemm<int, dgemm_fn>(f.dgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// While alive (in the calling thread, around a whole kernel call), OpenBLAS runs one thread
// per call, in the thread that calls it. Reference-counted across concurrent kernel calls.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded(const BlasFunctions& f, bool needed) : f_(needed && f.usable() ? &f : nullptr) {
    if (!f_) return;
    std::lock_guard<std::mutex> lock(mutex());
    if (state().active++ == 0) {
      state().saved = f_->get_threads();
      if (state().saved != 1) f_->set_threads(1);
    }
  }
  ~BlasSingleThreaded() {
    if (!f_) return;
    std::lock_guard<std::mutex> lock(mutex());
    if (--state().active == 0 && state().saved != 1) f_->set_threads(state().saved);
  }
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  struct State {
    int active = 0, saved = 1;
  };
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static State& state() {
    static State s;
    return s;
  }
  const BlasFunctions* f_;
};

}  // namespace fastrnn
