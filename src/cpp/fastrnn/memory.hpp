// Memory helpers of the kernels: software prefetch, and a copy that bypasses the cache for
// large outputs. Header-only, no Python types.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace detail
}  // namespace fastrnn
