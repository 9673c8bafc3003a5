// The float32 kernels of a kernel module (see kernel_module.cpp).
#include "fastrnn/kernel_entries.hpp"

template <>
fastrnn::KernelEntries<float> fastrnn::level_entries<float>() {
  return detail::make_entries<float>();
}

const char* fastrnn::level_eigen_simd() { return Eigen::SimdInstructionSetsInUse(); }
