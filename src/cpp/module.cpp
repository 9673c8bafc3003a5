// The compiled module fastrnn._core: only bindings live here; the kernels are
// header-only templates under fastrnn/ with no Python types, compiled once per
// instruction-set level into the kernel modules (kernel_module.cpp). _core is compiled for
// baseline x86-64, decides which level this CPU can run, and holds the kernels' bindings
// (kernel_bindings.cpp), which each kernel module asks for when it is imported.
#include <pybind11/pybind11.h>

#include <Eigen/Core>
#include <cstdlib>
#include <string>

namespace py = pybind11;

namespace fastrnn {
void bind_kernels(py::module_& core);  // kernel_bindings.cpp
}

namespace {

// Instruction-set levels of the kernel modules, lowest first; each requires the CPU
// features it was compiled with (see CMakeLists.txt).
const char* const kLevels[] = {"generic", "avx2", "avx512"};

bool level_supported(const std::string& level) {
  if (level == "generic") return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (level == "avx2") return avx2;
  if (level == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#endif
  return false;
}

bool level_built(const std::string& level) {
#ifdef FASTRNN_BUILT_LEVELS
  return (std::string(" ") + FASTRNN_BUILT_LEVELS + " ").find(" " + level + " ") !=
         std::string::npos;
#else
  return level == "generic";
#endif
}

// The best level this CPU supports and this build has; the environment variable
// FASTRNN_CPP_ISA (generic, avx2, avx512) can ask for a lower one.
std::string kernel_isa() {
  const char* env = std::getenv("FASTRNN_CPP_ISA");
  std::string cap = env && *env ? env : "avx512";
  bool known = false;
  for (const char* level : kLevels) known = known || cap == level;
  if (!known)
    throw py::value_error("environment variable FASTRNN_CPP_ISA='" + cap +
                          "' names no level; valid are 'generic', 'avx2', 'avx512'");
  std::string best = "generic";
  for (const char* level : kLevels) {
    if (level_supported(level) && level_built(level)) best = level;
    if (cap == level) break;
  }
  return best;
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = FASTRNN_CXX_COMPILER;
  info["flags"] = FASTRNN_CXX_FLAGS;
  info["build_type"] = FASTRNN_BUILD_TYPE;
  info["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." +
                          std::to_string(EIGEN_MAJOR_VERSION) + "." +
                          std::to_string(EIGEN_MINOR_VERSION);
  const std::string isa = kernel_isa();
  info["kernel_isa"] = isa;
  py::list built;
  for (const char* level : kLevels)
    if (level_built(level)) built.append(level);
  info["kernel_isas_built"] = built;
  try {
    py::module_ kernels = py::module_::import(("fastrnn._kernels_" + isa).c_str());
    info["kernel_flags"] = kernels.attr("FLAGS");
    info["eigen_simd"] = kernels.attr("EIGEN_SIMD");
  } catch (py::error_already_set& e) {
    info["eigen_simd"] = std::string("unavailable: ") + e.what();
  }
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  // The large products go to the BLAS that the Python adapter hands over to the kernel
  // module when it loads it (fastrnn.backends.cpp_backend): what that module reports.
  try {
    py::module_ backend = py::module_::import("fastrnn.backends.cpp_backend");
    py::object kernels = backend.attr("_kernels");
    info["blas"] = kernels.is_none() ? py::object(backend.attr("UNAVAILABLE_REASON"))
                                     : kernels.attr("blas")();
    // which products go there (blas.hpp: the large ones, or every one)
    if (!kernels.is_none()) {
      const auto width = kernels.attr("blas_width")().cast<std::string>();
      // a one-column per-step product in-house where BLAS takes the rest: blas.hpp's rule
      const bool narrow_in_house = !kernels.attr("step_uses_blas")(1, 1, 1).cast<bool>();
      info["blas_products"] =
          kernels.attr("blas_takes_all")().cast<bool>()
              ? "every product (generic kernels beside BLAS kernels as wide as " + width +
                    (narrow_in_house ? "; per-step products of 1 to 3 columns in-house)" : ")")
              : "large products (blas.hpp's thresholds for BLAS kernels as wide as " + width +
                    " beside " + kernel_isa() + " kernels)";
    }
    // and what the kernels' workers run on (fastrnn.torch hands over PyTorch's OpenMP team)
    info["threads"] = kernels.is_none() ? py::object(backend.attr("UNAVAILABLE_REASON"))
                                        : kernels.attr("thread_team")();
  } catch (py::error_already_set& e) {
    info["blas"] = std::string("unavailable: ") + e.what();
  }
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastrnn's compiled extension (C++ with Eigen): build info and CPU dispatch.";
  m.def("build_info", &build_info,
        "How the extension was built: compiler, flags, Eigen version, the kernels' "
        "instruction-set level and SIMD, OpenMP, BLAS, the workers' threads.");
  m.def("cpu_supports", &level_supported, py::arg("level"),
        "Whether this CPU (and OS) can run kernels of instruction-set level `level` "
        "('generic', 'avx2', 'avx512').");
  m.def("kernel_isa", &kernel_isa,
        "The instruction-set level whose kernel module fastrnn uses: the best one this CPU "
        "supports and this build has, capped by the environment variable FASTRNN_CPP_ISA.");
  fastrnn::bind_kernels(m);
}
