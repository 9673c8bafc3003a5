// A kernel module, fastrnn._kernels_<level>: the recurrent kernels compiled for one
// instruction-set level (CMakeLists.txt builds this file with kernels_f32.cpp and
// kernels_f64.cpp once per level, each module with hidden symbols, so that Eigen template
// instances compiled with different -m flags never mix). Written against the plain CPython
// C API, no pybind11: the module carries the level's KernelTable (fastrnn/kernel_table.hpp)
// in a capsule and its ISA, EIGEN_SIMD and FLAGS, and asks fastrnn._core (compiled once,
// for baseline x86-64) to add the Python functions, which check every argument there and
// call the kernels through the table.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <string>

#include "fastrnn/blas.hpp"
#include "fastrnn/kernel_table.hpp"
#include "fastrnn/parallel.hpp"

#ifndef FASTRNN_KERNELS_NAME
#error "FASTRNN_KERNELS_NAME must name the module"
#endif
#ifndef FASTRNN_ISA
#error "FASTRNN_ISA must name the instruction-set level"
#endif
#ifndef FASTRNN_ISA_FLAGS
#define FASTRNN_ISA_FLAGS ""
#endif

#define FASTRNN_STR_(x) #x
#define FASTRNN_STR(x) FASTRNN_STR_(x)
#define FASTRNN_PYINIT_(name) PyInit_##name
#define FASTRNN_PYINIT(name) FASTRNN_PYINIT_(name)

namespace {

void set_blas(std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t get_threads,
              std::uintptr_t set_threads, bool int64, int level, const char* name) {
  fastrnn::BlasFunctions f;
  f.sgemm = reinterpret_cast<fastrnn::sgemm_fn>(sgemm);
  f.dgemm = reinterpret_cast<fastrnn::dgemm_fn>(dgemm);
  f.get_threads = reinterpret_cast<fastrnn::get_threads_fn>(get_threads);
  f.set_threads = reinterpret_cast<fastrnn::set_threads_fn>(set_threads);
  f.int64 = int64;
  f.level = level;
  f.name = name;
  fastrnn::set_blas(f);
}

const char* blas_name() {
  thread_local std::string name;
  name = fastrnn::current_blas().name;
  return name.c_str();
}

long long blas_calls() { return fastrnn::blas_calls().load(); }

bool blas_takes_all() { return fastrnn::blas_takes_all(fastrnn::current_blas()); }

int blas_level() { return fastrnn::current_blas().level; }

bool step_uses_blas(long long GH, long long H, long long nb) {
  return fastrnn::step_uses_blas(fastrnn::current_blas(), GH, H, nb);
}

void set_thread_team(std::uintptr_t parallel, std::uintptr_t thread_num,
                     std::uintptr_t num_threads, const char* name) {
  fastrnn::ThreadTeam team;
  team.parallel = reinterpret_cast<fastrnn::ThreadTeam::parallel_fn>(parallel);
  team.thread_num = reinterpret_cast<fastrnn::ThreadTeam::index_fn>(thread_num);
  team.num_threads = reinterpret_cast<fastrnn::ThreadTeam::index_fn>(num_threads);
  team.name = name;
  fastrnn::set_thread_team(team);
}

const char* thread_team_name() {
  thread_local std::string name;
  const fastrnn::ThreadTeam team = fastrnn::current_thread_team();
  name = team.usable() && !team.usable_here()
             ? "own threads (a forked child: " + team.name + " stays with the parent)"
             : team.name;
  return name.c_str();
}

long long team_calls() { return fastrnn::team_calls().load(); }

fastrnn::KernelTable make_table() {
  fastrnn::KernelTable t;
  t.version = fastrnn::kKernelTableVersion;
  t.size = sizeof(fastrnn::KernelTable);
  t.f32 = fastrnn::level_entries<float>();
  t.f64 = fastrnn::level_entries<double>();
  t.set_blas = &set_blas;
  t.blas_name = &blas_name;
  t.blas_calls = &blas_calls;
  t.blas_takes_all = &blas_takes_all;
  t.blas_level = &blas_level;
  t.step_uses_blas = &step_uses_blas;
  t.set_thread_team = &set_thread_team;
  t.thread_team_name = &thread_team_name;
  t.team_calls = &team_calls;
  return t;
}

fastrnn::KernelTable table = make_table();

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    FASTRNN_STR(FASTRNN_KERNELS_NAME),
    "fastrnn's recurrent kernels, compiled for one instruction-set level.",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC FASTRNN_PYINIT(FASTRNN_KERNELS_NAME)(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  PyObject* capsule = PyCapsule_New(&table, fastrnn::kKernelTableCapsule, nullptr);
  PyObject* core = nullptr;
  PyObject* bound = nullptr;
  if (PyModule_AddStringConstant(m, "ISA", FASTRNN_ISA) < 0 ||
      PyModule_AddStringConstant(m, "EIGEN_SIMD", fastrnn::level_eigen_simd()) < 0 ||
      PyModule_AddStringConstant(m, "FLAGS", FASTRNN_ISA_FLAGS) < 0 || capsule == nullptr ||
      PyModule_AddObjectRef(m, "_table", capsule) < 0 ||
      (core = PyImport_ImportModule("fastrnn._core")) == nullptr ||
      (bound = PyObject_CallMethod(core, "_bind_kernels", "O", m)) == nullptr) {
    Py_XDECREF(capsule);
    Py_XDECREF(core);
    Py_DECREF(m);
    return nullptr;
  }
  Py_DECREF(capsule);
  Py_DECREF(core);
  Py_DECREF(bound);
  return m;
}
