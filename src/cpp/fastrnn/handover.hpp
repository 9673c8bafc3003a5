// A process-wide value that Python hands over at run time (the BLAS functions of blas.hpp,
// a host's thread team of parallel.hpp): replaced under a mutex, and copied whole by each
// kernel call at its start, so a call keeps what it started with.
#pragma once

#include <mutex>

namespace fastrnn {

template <class T>
class HandedOver {
 public:
  void set(const T& value) {
    std::lock_guard<std::mutex> lock(m_);
    value_ = value;
  }
  T get() const {
    std::lock_guard<std::mutex> lock(m_);
    return value_;
  }

 private:
  mutable std::mutex m_;
  T value_{};
};

}  // namespace fastrnn
