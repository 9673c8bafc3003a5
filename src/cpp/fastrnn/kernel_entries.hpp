// The kernel entry points of a kernel module (kernel_table.hpp) for one scalar type: each
// wraps one kernel of recurrent.hpp / head.hpp and turns a C++ exception into a
// KernelStatus, so that no exception crosses the module boundary. Included by the
// translation units kernels_f32.cpp and kernels_f64.cpp only (the -O3 part of the build,
// compiled once per instruction-set level).
#pragma once

// GCC warns (-Wignored-attributes) where head.hpp uses an Eigen packet type, which carries
// alignment attributes, as a template argument; Eigen silences the same warning for its
// own headers (DisableStupidWarnings.h). Not pushed/popped: it must cover the point of
// instantiation, in the including translation unit.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

#include <cstdio>
#include <exception>
#include <new>

#include "head.hpp"
#include "kernel_table.hpp"
#include "recurrent.hpp"

namespace fastrnn {
namespace detail {

// Runs f(), recording an exception it throws in *status.
template <class F>
void guarded(KernelStatus* status, F&& f) {
  status->code = KernelStatus::ok;
  try {
    f();
  } catch (const std::bad_alloc&) {
    status->code = KernelStatus::bad_alloc;
  } catch (const std::exception& e) {
    status->code = KernelStatus::error;
    std::snprintf(status->message, sizeof(status->message), "%s", e.what());
  } catch (...) {
    status->code = KernelStatus::error;
    std::snprintf(status->message, sizeof(status->message), "unknown C++ exception");
  }
}

template <class T>
KernelEntries<T> make_entries() {
  KernelEntries<T> e;
  e.layout = {sizeof(Problem<T>),     sizeof(ForwardOutput<T>), sizeof(BackwardInput<T>),
              sizeof(BackwardOutput<T>), sizeof(HeadProblem<T>),  sizeof(HeadOutput<T>)};
  e.forward = [](const Problem<T>* p, const ForwardOutput<T>* out, KernelStatus* status) {
    guarded(status, [&] { fastrnn::forward(*p, *out); });
  };
  e.backward = [](const Problem<T>* p, const BackwardInput<T>* in, const BackwardOutput<T>* g,
                  KernelStatus* status) {
    guarded(status, [&] { fastrnn::backward(*p, *in, *g); });
  };
  e.linear_cross_entropy = [](const HeadProblem<T>* p, const HeadOutput<T>* out,
                              KernelStatus* status) {
    double loss = 0.0;
    guarded(status, [&] { loss = fastrnn::linear_cross_entropy(*p, *out); });
    return loss;
  };
  return e;
}

}  // namespace detail
}  // namespace fastrnn
