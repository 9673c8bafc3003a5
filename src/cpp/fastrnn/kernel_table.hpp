// The table of kernel entry points that a kernel module (fastrnn._kernels_<level>, one per
// instruction-set level) hands to the bindings in fastrnn._core: plain function pointers,
// no Python types, no exceptions across the boundary. The split keeps the build short: the
// kernels (Eigen, compiled with -O3 once per level) and the bindings (pybind11, argument
// checking, compiled once) are separate translation units, and only the kernels are
// compiled three times (see CMakeLists.txt).
//
// The kernels' argument structs (Problem, ForwardOutput, ... in recurrent.hpp, head.hpp)
// cross the boundary by pointer; both sides are built from the same headers in one build,
// and the table records its version and the size of every struct, which the bindings
// check before they use a table (a stale module from another build is refused at import).
//
// Adding a kernel entry point: one member in KernelEntries<T> (below), its wrapper in
// kernel_entries.hpp, its binding in kernel_bindings.cpp; bump kKernelTableVersion.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastrnn {

template <class T>
struct Problem;
template <class T>
struct ForwardOutput;
template <class T>
struct BackwardInput;
template <class T>
struct BackwardOutput;
template <class T>
struct HeadProblem;
template <class T>
struct HeadOutput;

constexpr std::uint32_t kKernelTableVersion = 6;  // 2: Problem::ids; 3: set_thread_team;
// 4: set_blas's level, blas_takes_all; 5: blas_level; 6: step_uses_blas

// What a kernel entry point reports: ok, or the C++ exception it caught (out of memory, or
// any other std::exception with its message), which the bindings raise as MemoryError or
// RuntimeError, as pybind11 did when the kernels ran inside the bindings' module.
struct KernelStatus {
  enum Code : std::int32_t { ok = 0, bad_alloc = 1, error = 2 };
  std::int32_t code = ok;
  char message[480] = {0};
};

// The sizes of the argument structs as the kernel module was compiled.
struct KernelLayout {
  std::uint32_t problem, forward_output, backward_input, backward_output, head_problem,
      head_output;
};

// The entry points for one scalar type T (float, double); each is called with the GIL
// released.
template <class T>
struct KernelEntries {
  KernelLayout layout;
  void (*forward)(const Problem<T>* p, const ForwardOutput<T>* out, KernelStatus* status);
  void (*backward)(const Problem<T>* p, const BackwardInput<T>* in, const BackwardOutput<T>* g,
                   KernelStatus* status);
  // returns the loss
  double (*linear_cross_entropy)(const HeadProblem<T>* p, const HeadOutput<T>* out,
                                 KernelStatus* status);
};

// One kernel module's table (the pointer its capsule holds, named kKernelTableCapsule).
struct KernelTable {
  std::uint32_t version;  // kKernelTableVersion
  std::uint32_t size;     // sizeof(KernelTable)
  KernelEntries<float> f32;
  KernelEntries<double> f64;
  // BLAS (blas.hpp; the state is the module's own): set_blas's arguments with the name as a
  // C string (null-terminated; copied); blas_name's pointer is valid until the calling
  // thread's next call of it.
  void (*set_blas)(std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t get_threads,
                   std::uintptr_t set_threads, bool int64, int level, const char* name);
  const char* (*blas_name)();
  long long (*blas_calls)();
  bool (*blas_takes_all)();  // blas.hpp's blas_takes_all for the BLAS handed over now
  int (*blas_level)();       // how wide its kernels run (BlasFunctions::level)
  // blas.hpp's step_uses_blas for the BLAS handed over now: whether a worker's per-step
  // product of GH x H weights and nb columns goes to BLAS
  bool (*step_uses_blas)(long long GH, long long H, long long nb);
  // A host's OpenMP runtime for the workers (parallel.hpp's ThreadTeam; 0s withdraw it),
  // with the same conventions as set_blas.
  void (*set_thread_team)(std::uintptr_t parallel, std::uintptr_t thread_num,
                          std::uintptr_t num_threads, const char* name);
  const char* (*thread_team_name)();
  long long (*team_calls)();

  template <class T>
  const KernelEntries<T>& entries() const;
};

template <>
inline const KernelEntries<float>& KernelTable::entries<float>() const {
  return f32;
}
template <>
inline const KernelEntries<double>& KernelTable::entries<double>() const {
  return f64;
}

constexpr const char* kKernelTableCapsule = "fastrnn.KernelTable";

// Defined in a kernel module, one translation unit per scalar type (kernels_f32.cpp,
// kernels_f64.cpp).
template <class T>
KernelEntries<T> level_entries();
template <>
KernelEntries<float> level_entries<float>();
template <>
KernelEntries<double> level_entries<double>();
// Eigen::SimdInstructionSetsInUse() of the kernels (defined in kernels_f32.cpp).
const char* level_eigen_simd();

}  // namespace fastrnn
