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
#include <type_traits>
#include <vector>

namespace fastrnn {

using Index = std::ptrdiff_t;

template <class T>
struct SimdTraits {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr int size = Eigen::internal::unpacket_traits<Packet>::size;
#if defined(__AVX512F__)
  // 32 vector registers: 3 x 8 accumulators + 3 rows of A + 1 broadcast. 4 x 8 (used
  // before) needs 37, and GCC 12 kept 5 accumulators on the stack, a load and a store per
  // FMA of theirs. Measured (float32, 1 thread, the inference forward, best of 7 in three
  // alternating runs, GFLOP/s of the per-step product): rnn H = 1024 B = 64 109-117
  // against 85-105 for 4 x 8, lstm H = 128 B = 32 116-119 against 67-79, gru H = 512
  // B = 32 86-117 against 80-98, lstm H = 64 B = 16 78-82 against 55-58; 4 x 6 in between.
  static constexpr int MR = 3;
#else
  // 16 vector registers: 3 x 4 accumulators + 3 rows of A + 1 broadcast. Measured (AVX2,
  // float32, 1 thread) against 2 x 4: W_hh 256 x 256 times 16 columns 86 against 66 GF/s,
  // 32 columns 72 against 62; 2 x 6 and 4 x 3 slower than 3 x 4.
  static constexpr int MR = 3;
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

// A packed (m x k) matrix in panels: the rows, padded with zeros to a whole number of packets
// (`ld` of them, the leading dimension a product's C needs), go in panels of SimdTraits::MR
// packets (the last one may have fewer), and each panel is stored on its own, column-major
// with its own row count as leading dimension: the micro-kernel then reads a panel as one
// contiguous stream. Stored column-major with leading dimension `ld`, the rows of one k were
// `ld` elements apart, a power-of-two stride for the common sizes (4H x H with H = 128..1024:
// 2 to 16 KB), which put all of a panel's k in the same few cache sets (L1, and for the
// 4 MB W_hh of H = 512 lstm or 1024 rnn, the L2 too).
template <class T>
struct PackedMatrix {
  Index rows = 0, cols = 0, ld = 0;
  std::vector<T> data;

  // Rows [r0, r0 + panel_rows(r0)) of the panel that starts at row r0 (a multiple of
  // panel_height()): its column j at data[r0 * cols + j * panel_rows(r0)].
  static constexpr Index panel_height() { return SimdTraits<T>::MR * SimdTraits<T>::size; }
  Index panel_rows(Index r0) const { return std::min(panel_height(), ld - r0); }
  T& at(Index i, Index j) {
    const Index r0 = i / panel_height() * panel_height();
    return data[static_cast<std::size_t>(r0 * cols + j * panel_rows(r0) + (i - r0))];
  }

  // From a row-major (m x k) matrix src (src[i * k + j]).
  void from_row_major(const T* src, Index m, Index k) {
    resize(m, k);
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < k; ++j) at(i, j) = src[i * k + j];
  }
  // From the transpose of a row-major (k x m) matrix src, i.e. A = src^T: column j of A is
  // row j of src, contiguous, so each panel's share of it is a copy.
  void from_row_major_transposed(const T* src, Index m, Index k) {
    resize(m, k);
    for (Index r0 = 0; r0 < m; r0 += panel_height()) {
      const Index n = std::min(panel_height(), m - r0);
      for (Index j = 0; j < k; ++j) std::copy(src + j * m + r0, src + j * m + r0 + n, &at(r0, j));
    }
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

// What a product reads and writes: A (rows x K, column-major, leading dimension lda, rows a
// whole number of packets); B (K x N) column-major (element (k, j) at B[j * ldb + k]) or,
// with b_row_major, row-major (at B[k * ldb + j]); C (rows x N, column-major, ldc). C is
// overwritten, or accumulated into with `accumulate`; `init` (rows,) if given is added to
// every column (a bias), else C starts from zero.
template <class T>
struct Operands {
  const T* A;
  Index lda;
  const T* B;
  Index ldb;
  T* C;
  Index ldc;
  Index K;
  const T* init;
};

template <class T, bool BRowMajor>
EIGEN_ALWAYS_INLINE T b_at(const T* B, Index ldb, Index k, Index j) {
  return BRowMajor ? B[k * ldb + j] : B[j * ldb + k];
}

// C[:, 0:NC] (MP packets of rows) (+)= A_panel * B[:, 0:NC], accumulators in registers.
template <class T, int MP, int NC, bool BRowMajor, bool Accumulate>
EIGEN_ALWAYS_INLINE void micro_tile(const Operands<T>& o, const T* A, const T* B, T* C,
                                    const T* init) {
  using namespace Eigen::internal;
  using Packet = typename SimdTraits<T>::Packet;
  constexpr int P = SimdTraits<T>::size;
  Packet acc[MP][NC];
  for (int i = 0; i < MP; ++i)
    for (int j = 0; j < NC; ++j)
      acc[i][j] = Accumulate ? ploadu<Packet>(C + j * o.ldc + i * P)
                             : (init ? ploadu<Packet>(init + i * P) : pset1<Packet>(T(0)));
  for (Index k = 0; k < o.K; ++k) {
    Packet a[MP];
    for (int i = 0; i < MP; ++i) a[i] = ploadu<Packet>(A + k * o.lda + i * P);
    for (int j = 0; j < NC; ++j) {
      const Packet b = pset1<Packet>(b_at<T, BRowMajor>(B, o.ldb, k, j));
      for (int i = 0; i < MP; ++i) acc[i][j] = pmadd(a[i], b, acc[i][j]);
    }
  }
  for (int i = 0; i < MP; ++i)
    for (int j = 0; j < NC; ++j) pstoreu(C + j * o.ldc + i * P, acc[i][j]);
}

// The last N % NR columns: a tile of exactly `cols` columns (cols <= NC).
template <class T, int MP, int NC, bool BRowMajor, bool Accumulate>
inline void column_rest(Index cols, const Operands<T>& o, const T* A, const T* B, T* C,
                        const T* init) {
  if constexpr (NC > 0) {
    if (cols == NC) return micro_tile<T, MP, NC, BRowMajor, Accumulate>(o, A, B, C, init);
    column_rest<T, MP, NC - 1, BRowMajor, Accumulate>(cols, o, A, B, C, init);
  }
}

// Columns [j0, j1) of one panel of MP packets of rows starting at row r0.
template <class T, int MP, bool BRowMajor, bool Accumulate>
inline void row_panel(const Operands<T>& o, Index r0, Index j0, Index j1) {
  constexpr int NR = SimdTraits<T>::NR;
  const T* A = o.A + r0;
  T* C = o.C + r0;
  const T* init = o.init ? o.init + r0 : nullptr;
  const Index bstep = BRowMajor ? 1 : o.ldb;
  Index j = j0;
  for (; j + NR <= j1; j += NR)
    micro_tile<T, MP, NR, BRowMajor, Accumulate>(o, A, o.B + j * bstep, C + j * o.ldc, init);
  if (j < j1)
    column_rest<T, MP, NR - 1, BRowMajor, Accumulate>(j1 - j, o, A, o.B + j * bstep,
                                                      C + j * o.ldc, init);
}

template <class T, int MP, bool BRowMajor, bool Accumulate>
inline void partial_panel(Index packets, const Operands<T>& o, Index r0, Index j0, Index j1) {
  if constexpr (MP > 0) {
    if (packets == MP) return row_panel<T, MP, BRowMajor, Accumulate>(o, r0, j0, j1);
    partial_panel<T, MP - 1, BRowMajor, Accumulate>(packets, o, r0, j0, j1);
  }
}

// One column (C = A b, a matrix-vector product) on G whole panels of A (MP packets of rows
// each) and a tail panel of MT packets (0: none) at once. With one column a panel's tile
// has only MR accumulators, each a chain of K dependent FMAs: MR chains cannot hide the FMA
// latency (4 cycles, 2 per cycle issued: 8 chains needed), so one panel at a time ran at
// half speed or less. Each element's sum is the same, in the same order, as on one panel:
// the same bits.
template <class T, int G, int MP, int MT>
EIGEN_ALWAYS_INLINE void column_panels(const T* const* A, Index K, const T* b, T* const* C,
                                       const T* const* init) {
  using namespace Eigen::internal;
  using Packet = typename SimdTraits<T>::Packet;
  constexpr int P = SimdTraits<T>::size;
  Packet acc[G > 0 ? G : 1][MP], tail[MT > 0 ? MT : 1];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < MP; ++i)
      acc[g][i] = init[g] ? ploadu<Packet>(init[g] + i * P) : pset1<Packet>(T(0));
  for (int i = 0; i < MT; ++i)
    tail[i] = init[G] ? ploadu<Packet>(init[G] + i * P) : pset1<Packet>(T(0));
  for (Index k = 0; k < K; ++k) {
    const Packet bk = pset1<Packet>(b[k]);
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < MP; ++i)
        acc[g][i] = pmadd(ploadu<Packet>(A[g] + k * (MP * P) + i * P), bk, acc[g][i]);
    for (int i = 0; i < MT; ++i)
      tail[i] = pmadd(ploadu<Packet>(A[G] + k * (MT * P) + i * P), bk, tail[i]);
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < MP; ++i) pstoreu(C[g] + i * P, acc[g][i]);
  for (int i = 0; i < MT; ++i) pstoreu(C[G] + i * P, tail[i]);
}

// column_panels with the tail's packet count `tail` known at run time (0 to MR - 1).
template <class T, int G, int MT>
inline void column_group(Index tail, const T* const* A, Index K, const T* b, T* const* C,
                         const T* const* init) {
  if constexpr (MT > 0) {
    if (tail != MT) return column_group<T, G, MT - 1>(tail, A, K, b, C, init);
  }
  if constexpr (G > 0 || MT > 0)
    column_panels<T, G, SimdTraits<T>::MR, MT>(A, K, b, C, init);
}

}  // namespace detail

// The general form behind small_gemm: `rows` (a whole number of packets) by N, see
// detail::Operands. Columns go in blocks so that a block of B stays in cache while every
// panel of rows uses it (A is small and stays in cache anyway).
template <class T, bool BRowMajor = false, bool Accumulate = false>
inline void panel_gemm(const detail::Operands<T>& o, Index rows, Index N) {
  constexpr int P = SimdTraits<T>::size;
  constexpr int MR = SimdTraits<T>::MR;
  constexpr Index column_block = 256;
  const Index packets = rows / P;
  for (Index j0 = 0; j0 < N; j0 += column_block) {
    const Index j1 = std::min(N, j0 + column_block);
    Index p = 0;
    for (; p + MR <= packets; p += MR)
      detail::row_panel<T, MR, BRowMajor, Accumulate>(o, p * P, j0, j1);
    if (p < packets)
      detail::partial_panel<T, MR - 1, BRowMajor, Accumulate>(packets - p, o, p * P, j0, j1);
  }
}

// C (A.ld x 1) = A b (+ init): the panels in groups of 2 or 3 and the last group with the
// partial panel at the end, if any (see detail::column_panels): at least 6 independent
// chains of FMAs wherever A has 2 whole panels.
template <class T>
inline void column_product(const PackedMatrix<T>& A, const T* b, T* C, const T* init) {
  constexpr Index P = SimdTraits<T>::size;
  const Index H = A.panel_height(), full = A.ld / H, tail = A.ld % H / P;
  const T* a[4];
  T* c[4];
  const T* in[4];
  Index panel = 0;
  // the panels [panel, panel + g) and, with `with_tail`, the partial panel after them
  const auto group = [&](auto g, bool with_tail) {
    for (Index i = 0; i <= g; ++i) {
      const Index r0 = (panel + i) * H;
      a[i] = A.data.data() + r0 * A.cols;
      c[i] = C + r0;
      in[i] = init ? init + r0 : nullptr;
    }
    detail::column_group<T, decltype(g)::value, SimdTraits<T>::MR - 1>(with_tail ? tail : 0, a,
                                                                      A.cols, b, c, in);
    panel += g;
  };
  using two = std::integral_constant<int, 2>;
  using three = std::integral_constant<int, 3>;
  while (full - panel > 4) group(three{}, false);
  if (full - panel == 4) group(two{}, false);
  switch (full - panel) {
    case 3: return group(three{}, true);
    case 2: return group(two{}, true);
    case 1: return group(std::integral_constant<int, 1>{}, true);
    default: return group(std::integral_constant<int, 0>{}, true);
  }
}

// C (A.ld x N, column-major, leading dimension ldc >= A.ld) = A * B (+ init per column),
// B (A.cols x N) column-major with leading dimension ldb (or, with BRowMajor, row-major:
// element (k, j) at B[k * ldb + j]). Rows of C beyond A.rows receive zeros (plus init's
// padding). The same sums in the same order as panel_gemm on A unpacked: the same bits.
template <class T, bool BRowMajor = false>
inline void small_gemm(const PackedMatrix<T>& A, const T* B, Index ldb, T* C, Index ldc, Index N,
                       const T* init = nullptr) {
  constexpr int P = SimdTraits<T>::size;
  constexpr int MR = SimdTraits<T>::MR;
  constexpr Index column_block = 256;
  const Index H = A.panel_height();
  if (N == 1 && !BRowMajor) return column_product(A, B, C, init);
  for (Index j0 = 0; j0 < N; j0 += column_block) {
    const Index j1 = std::min(N, j0 + column_block);
    for (Index r0 = 0; r0 < A.ld; r0 += H) {
      const Index rows = A.panel_rows(r0);
      const detail::Operands<T> o{A.data.data() + r0 * A.cols, rows, B, ldb, C + r0, ldc,
                                  A.cols, init ? init + r0 : nullptr};
      if (rows == MR * P)
        detail::row_panel<T, MR, BRowMajor, false>(o, 0, j0, j1);
      else
        detail::partial_panel<T, MR - 1, BRowMajor, false>(rows / P, o, 0, j0, j1);
    }
  }
}

}  // namespace fastrnn
