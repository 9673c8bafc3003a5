// The per-step product of the recurrence: C = A B with A a constant weight matrix packed
// once per call, B a few state columns. No Python types, no allocation.
//
// Why not Eigen's GEMM here: it re-packs A (the whole W_hh) on every call, which for the
// small products of a time step (64x64 times 64x16) costs about as much as the product
// itself. A is packed once per call instead (rows padded to a whole number of SIMD
// packets), and a register-blocked micro-kernel built on Eigen's packet primitives (so it
// follows the instruction set the translation unit is compiled for) does the rest.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <vector>

namespace fastrnn {

using Index = std::ptrdiff_t;

template <class T>
struct SimdTraits {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr int size = Eigen::internal::unpacket_traits<Packet>::size;
#if defined(__AVX512F__)
  static constexpr int MR = 4;  // packets of rows per register tile (32 vector registers)
#else
  static constexpr int MR = 2;  // 16 vector registers
#endif
#if defined(__AVX512F__)
  static constexpr int NR = 8;  // columns per register tile: 8 measured 10% faster than 4
#else                           // for 1024x1024 W_hh, the same for 64x64
  static constexpr int NR = 4;
#endif
};

// Round m up to a whole number of packets.
template <class T>
inline Index padded_rows(Index m) {
  constexpr Index P = SimdTraits<T>::size;
  return (m + P - 1) / P * P;
}

// A packed (m x k) matrix: column-major, leading dimension padded_rows(m), zero padding.
template <class T>
struct PackedMatrix {
  Index rows = 0, cols = 0, ld = 0;
  std::vector<T> data;

  // From a row-major (m x k) matrix src (src[i * k + j]).
  void from_row_major(const T* src, Index m, Index k) {
    resize(m, k);
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < k; ++j) data[j * ld + i] = src[i * k + j];
  }
  // From the transpose of a row-major (k x m) matrix src, i.e. A = src^T: column j of A is
  // row j of src, contiguous, so this is a padded copy.
  void from_row_major_transposed(const T* src, Index m, Index k) {
    resize(m, k);
    for (Index j = 0; j < k; ++j) std::copy(src + j * m, src + (j + 1) * m, data.begin() + j * ld);
  }

 private:
  void resize(Index m, Index k) {
    rows = m;
    cols = k;
    ld = padded_rows<T>(m);
    data.assign(static_cast<std::size_t>(ld * k), T(0));
  }
};

namespace detail {

// C[:, 0:NC] (MP packets of rows) = A_panel * B[:, 0:NC], accumulators in registers.
template <class T, int MP, int NC>
EIGEN_ALWAYS_INLINE void micro_tile(const T* A, Index lda, const T* B, Index ldb, T* C, Index ldc,
                                    Index K) {
  using namespace Eigen::internal;
  using Packet = typename SimdTraits<T>::Packet;
  constexpr int P = SimdTraits<T>::size;
  Packet acc[MP][NC];
  for (int i = 0; i < MP; ++i)
    for (int j = 0; j < NC; ++j) acc[i][j] = pset1<Packet>(T(0));
  for (Index k = 0; k < K; ++k) {
    Packet a[MP];
    for (int i = 0; i < MP; ++i) a[i] = ploadu<Packet>(A + k * lda + i * P);
    for (int j = 0; j < NC; ++j) {
      const Packet b = pset1<Packet>(B[j * ldb + k]);
      for (int i = 0; i < MP; ++i) acc[i][j] = pmadd(a[i], b, acc[i][j]);
    }
  }
  for (int i = 0; i < MP; ++i)
    for (int j = 0; j < NC; ++j) pstoreu(C + j * ldc + i * P, acc[i][j]);
}

// The last N % NR columns: a tile of exactly `cols` columns (cols < NC).
template <class T, int MP, int NC>
inline void column_rest(Index cols, const T* A, Index lda, const T* B, Index ldb, T* C, Index ldc,
                        Index K) {
  if constexpr (NC > 0) {
    if (cols == NC) return micro_tile<T, MP, NC>(A, lda, B, ldb, C, ldc, K);
    column_rest<T, MP, NC - 1>(cols, A, lda, B, ldb, C, ldc, K);
  }
}

template <class T, int MP>
inline void row_panel(const T* A, Index lda, const T* B, Index ldb, T* C, Index ldc, Index K,
                      Index N) {
  constexpr int NR = SimdTraits<T>::NR;
  Index j = 0;
  for (; j + NR <= N; j += NR) micro_tile<T, MP, NR>(A, lda, B + j * ldb, ldb, C + j * ldc, ldc, K);
  if (j < N) column_rest<T, MP, NR - 1>(N - j, A, lda, B + j * ldb, ldb, C + j * ldc, ldc, K);
}

template <class T, int MP>
inline void partial_panel(Index packets, const T* A, Index lda, const T* B, Index ldb, T* C,
                          Index ldc, Index K, Index N) {
  if constexpr (MP > 0) {
    if (packets == MP) return row_panel<T, MP>(A, lda, B, ldb, C, ldc, K, N);
    partial_panel<T, MP - 1>(packets, A, lda, B, ldb, C, ldc, K, N);
  }
}

}  // namespace detail

// C (A.ld x N, column-major, leading dimension ldc >= A.ld) = A * B, B (A.cols x N)
// column-major with leading dimension ldb. Rows of C beyond A.rows receive zeros.
template <class T>
inline void small_gemm(const PackedMatrix<T>& A, const T* B, Index ldb, T* C, Index ldc, Index N) {
  constexpr int P = SimdTraits<T>::size;
  constexpr int MR = SimdTraits<T>::MR;
  const Index packets = A.ld / P;
  const T* a = A.data.data();
  Index p = 0;
  for (; p + MR <= packets; p += MR)
    detail::row_panel<T, MR>(a + p * P, A.ld, B, ldb, C + p * P, ldc, A.cols, N);
  if (p < packets)
    detail::partial_panel<T, MR - 1>(packets - p, a + p * P, A.ld, B, ldb, C + p * P, ldc, A.cols,
                                     N);
}

}  // namespace fastrnn
