// The compiled module fastrnn._core: only bindings live here; the kernels are
// header-only templates under fastrnn/ with no Python types.
#include <pybind11/pybind11.h>

#include <Eigen/Core>
#include <string>

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["compiler"] = FASTRNN_CXX_COMPILER;
  info["flags"] = FASTRNN_CXX_FLAGS;
  info["build_type"] = FASTRNN_BUILD_TYPE;
  info["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." +
                          std::to_string(EIGEN_MAJOR_VERSION) + "." +
                          std::to_string(EIGEN_MINOR_VERSION);
  info["eigen_simd"] = std::string(Eigen::SimdInstructionSetsInUse());
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastrnn's compiled kernels (C++ with Eigen).";
  m.def("build_info", &build_info,
        "How the extension was built: compiler, flags, Eigen version and SIMD level, OpenMP.");
}
