// The float64 kernels of a kernel module (see kernel_module.cpp).
#include "fastrnn/kernel_entries.hpp"

template <>
fastrnn::KernelEntries<double> fastrnn::level_entries<double>() {
  return detail::make_entries<double>();
}
