// Memory helpers of the kernels: software prefetch, a copy that bypasses the cache for
// large outputs, and scratch a thread keeps between calls. Header-only, no Python types.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastrnn {

using Index = std::ptrdiff_t;

namespace detail {

// Ask for a block the next step reads (written long ago by the input projection, or read
// backwards in time, which the hardware prefetcher does not follow) while this step computes.
template <class T>
inline void prefetch(const T* p, Index n) {
  const char* c = reinterpret_cast<const char*>(p);
  const Index bytes = n * static_cast<Index>(sizeof(T));
#if defined(__GNUC__) || defined(__clang__)
  for (Index i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
#else
  (void)c;
  (void)bytes;
#endif
}

#if defined(__AVX512F__)
constexpr std::size_t kStreamBytes = 64;
inline void stream_store(float* d, const float* s) { _mm512_stream_ps(d, _mm512_loadu_ps(s)); }
inline void stream_store(double* d, const double* s) { _mm512_stream_pd(d, _mm512_loadu_pd(s)); }
#elif defined(__AVX__)
constexpr std::size_t kStreamBytes = 32;
inline void stream_store(float* d, const float* s) { _mm256_stream_ps(d, _mm256_loadu_ps(s)); }
inline void stream_store(double* d, const double* s) { _mm256_stream_pd(d, _mm256_loadu_pd(s)); }
#elif defined(__SSE2__)
constexpr std::size_t kStreamBytes = 16;
inline void stream_store(float* d, const float* s) { _mm_stream_ps(d, _mm_loadu_ps(s)); }
inline void stream_store(double* d, const double* s) { _mm_stream_pd(d, _mm_loadu_pd(s)); }
#endif

// Whether an output of `bytes` is written with stream_copy: from 16 MB, more than a
// share of the last-level cache it would only evict, to be read back from memory anyway.
// Smaller ones may still be in cache when the caller reads them.
inline bool worth_streaming(Index bytes) { return bytes >= (Index(16) << 20); }

// dst[0:n] = src[0:n] with non-temporal stores (where the instruction set has them) for
// an output too large to stay in cache: each line is written once, and not first read in
// as a normal store would. They are weakly ordered: call stream_fence() once after the
// last of them, before anyone else may read the data (a fence per call would wait for
// every copy to reach memory).
template <class T>
inline void stream_copy(const T* src, Index n, T* dst) {
  Index i = 0;
#if defined(__SSE2__)
  constexpr Index L = static_cast<Index>(kStreamBytes / sizeof(T));
  for (; i < n && reinterpret_cast<std::uintptr_t>(dst + i) % kStreamBytes != 0; ++i)
    dst[i] = src[i];
  for (; i + L <= n; i += L) stream_store(dst + i, src + i);
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Scratch that a thread keeps between kernel calls. The backward's block buffers were
// allocated and zero-filled on every call, and the first touch of that fresh memory (page
// faults, the kernel zeroing pages, the memset) was 8% of an LSTM backward at the char-LM
// shape (H = 128, B = 32, 1 thread). A Scratch takes the smallest of the calling thread's
// spare buffers that is large enough, else a new one, and does not clear it (its users write
// before they read); keep() gives it back to the spares of the thread that took it (the
// pool's and PyTorch's threads outlive the calls), else it is freed. A thread keeps at most
// kSpares buffers of kSpareBytes in all, giving up the largest first.
template <class T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(Index n) { resize(n); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // n elements of undefined value; only on an empty Scratch
  void resize(Index n) {
    if (n <= 0) return;
    auto& spares = thread_spares();
    owner_ = &spares;
    size_ = n;
    auto best = spares.end();
    for (auto it = spares.begin(); it != spares.end(); ++it)
      if (it->capacity >= n && (best == spares.end() || it->capacity < best->capacity)) best = it;
    if (best == spares.end()) {
      buf_.reset(new T[static_cast<std::size_t>(n)]);
      capacity_ = n;
      return;
    }
    buf_ = std::move(best->buf);
    capacity_ = best->capacity;
    spares.erase(best);
  }
  T* data() { return buf_.get(); }
  const T* data() const { return buf_.get(); }
  Index size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Back to the spares of this thread, if it is the one that took the buffer.
  void keep() {
    auto& spares = thread_spares();
    if (!buf_ || owner_ != &spares) return;
    spares.push_back({std::move(buf_), capacity_});
    size_ = capacity_ = 0;
    const auto larger = [](const Spare& a, const Spare& b) { return a.capacity > b.capacity; };
    std::sort(spares.begin(), spares.end(), larger);
    Index bytes = 0;
    for (const Spare& s : spares) bytes += s.capacity * Index(sizeof(T));
    while (!spares.empty() && (spares.size() > kSpares || bytes > kSpareBytes)) {
      bytes -= spares.front().capacity * Index(sizeof(T));
      spares.erase(spares.begin());
    }
  }

 private:
  static constexpr std::size_t kSpares = 16;
  static constexpr Index kSpareBytes = Index(32) << 20;
  struct Spare {
    std::unique_ptr<T[]> buf;
    Index capacity;
  };
  static std::vector<Spare>& thread_spares() {
    thread_local std::vector<Spare> spares;
    return spares;
  }
  std::unique_ptr<T[]> buf_;
  Index size_ = 0, capacity_ = 0;
  const std::vector<Spare>* owner_ = nullptr;
};

}  // namespace detail
}  // namespace fastrnn
