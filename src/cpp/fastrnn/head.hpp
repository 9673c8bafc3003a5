// The output head: a linear layer and its softmax cross-entropy, forward and backward in
// one pass: header-only, templated on the scalar type, no Python types. The meaning is
// that of linear_cross_entropy in python/fastrnn/backends/numpy_backend.py (the course's
// o_t = V h_t + c with a softmax and the cross-entropy summed over steps):
//
//   z_n = W h_n + b,   w_n = scale * row_weights[n]
//   loss = sum_n w_n (logsumexp(z_n) - z_n[y_n]),   dz_n = w_n (softmax(z_n) - onehot(y_n))
//   dh = dz W,   dW = dz^T h,   db = sum_n dz_n
//
// Rows go in blocks whose logits stay in cache: per block, one packed product for the
// logits (bias folded in), the softmax and its gradient in place, then the two gradient
// products read that block of dz while it is still in cache. The logits of all rows, which
// the composition Linear + softmax_cross_entropy writes to memory and reads back four
// times, never exist. Workers take contiguous ranges of rows, each with its own partial
// dW and db, summed at the end in a fixed order (the same bits for the same thread count).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"
#include "small_gemm.hpp"

namespace fastrnn {

template <class T>
struct HeadProblem {
  Index N = 0, H = 0, K = 0;
  const T* h = nullptr;                   // (N, H) row-major
  const T* weight = nullptr;              // (K, H) row-major
  const T* bias = nullptr;                // (K,)
  const std::int64_t* targets = nullptr;  // (N,), each in 0..K-1
  const T* row_weights = nullptr;         // (N,), or null: every row weighs 1
  T scale = T(1);
  int num_threads = 1;
  bool flush_denormals = true;
};

template <class T>
struct HeadOutput {
  T* dh = nullptr;       // (N, H)
  T* dweight = nullptr;  // (K, H)
  T* dbias = nullptr;    // (K,)
};

namespace detail {

template <class T>
using AlignedMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  // Eigen aligns these

// One worker's rows [r0, r1): adds its share of dW^T (H x K, column-major) and db into
// dWt and db, writes its rows of dh, and returns its share of the loss.
template <class T>
double head_rows(const HeadProblem<T>& p, const HeadOutput<T>& out, const PackedMatrix<T>& Wp,
                 const PackedMatrix<T>& WTp, const T* bias_padded, Index r0, Index r1,
                 AlignedMat<T>& dWt, Eigen::Matrix<T, Eigen::Dynamic, 1>& db) {
  using StridedMat = Eigen::Map<AlignedMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  const Index H = p.H, K = p.K, Kp = Wp.ld, Hp = WTp.ld;
  constexpr Index P = SimdTraits<T>::size;
  const bool h_panels = H % P == 0;
  // a block of logits of about 32 KB (L1), a whole number of register tiles of columns
  const Index block = std::clamp<Index>(
      32768 / static_cast<Index>(sizeof(T) * std::max(Kp, Hp)) / SimdTraits<T>::NR *
          SimdTraits<T>::NR,
      SimdTraits<T>::NR, 512);
  AlignedMat<T> Z(Kp, block);                              // logits, then dz
  AlignedMat<T> dh_scratch(h_panels ? 0 : Hp, h_panels ? 0 : block);  // padded rows of dh
  double loss = 0.0;
  for (Index c0 = r0; c0 < r1; c0 += block) {
    const Index n = std::min(block, r1 - c0);
    const T* hb = p.h + c0 * H;
    small_gemm(Wp, hb, H, Z.data(), Kp, n, bias_padded);  // z = W h + b, column per row
    for (Index j = 0; j < n; ++j) {
      auto z = Z.col(j).head(K).array();
      const Index y = static_cast<Index>(p.targets[c0 + j]);
      const T m = z.maxCoeff();
      const T picked = z(y) - m;
      z = (z - m).exp();
      const T sum = z.sum();
      const T w = p.row_weights ? p.scale * p.row_weights[c0 + j] : p.scale;
      loss += static_cast<double>(w) * static_cast<double>(std::log(sum) - picked);
      z *= w / sum;  // w softmax
      z(y) -= w;     // - w onehot
    }
    const StridedMat dz(Z.data(), K, n, Eigen::OuterStride<>(Kp));
    for (Index j = 0; j < n; ++j) db += dz.col(j);
    if (h_panels) {  // dW^T += h_blk^T dz^T, then dh_blk = W^T dz
      panel_gemm<T, true, true>({hb, H, Z.data(), Kp, dWt.data(), H, n, nullptr}, H, K);
      small_gemm(WTp, Z.data(), Kp, out.dh + c0 * H, H, n);
    } else {
      dWt.noalias() += Eigen::Map<const AlignedMat<T>>(hb, H, n) * dz.transpose();
      small_gemm(WTp, Z.data(), Kp, dh_scratch.data(), Hp, n);
      Eigen::Map<AlignedMat<T>>(out.dh + c0 * H, H, n) = dh_scratch.topLeftCorner(H, n);
    }
  }
  return loss;
}

}  // namespace detail

// Runs the head; fills `out` and returns the loss.
template <class T>
double linear_cross_entropy(const HeadProblem<T>& p, const HeadOutput<T>& out) {
  using namespace detail;
  const Index H = p.H, K = p.K;
  Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> db_out(out.dbias, K);
  Eigen::Map<AlignedMat<T>> dW_out(out.dweight, H, K);  // (K, H) row-major: dW^T
  if (p.N == 0) {
    db_out.setZero();
    dW_out.setZero();
    return 0.0;
  }
  PackedMatrix<T> Wp, WTp;  // W (K x H) and W^T (H x K), rows padded to whole packets
  Wp.from_row_major(p.weight, K, H);
  WTp.from_row_major_transposed(p.weight, H, K);
  std::vector<T> bias_padded(static_cast<std::size_t>(Wp.ld), T(0));
  std::copy_n(p.bias, K, bias_padded.begin());
  // a worker only for at least ~4 M multiply-adds of work (thread start-up is ~30 us)
  const Index min_rows = std::max<Index>(1, (Index(1) << 22) / (3 * H * K + 1));
  const int workers =
      static_cast<int>(std::clamp<Index>(p.N / min_rows, 1, std::max(1, p.num_threads)));
  std::vector<AlignedMat<T>> dWt(workers);
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> db(workers);
  std::vector<double> loss(workers, 0.0);
  run_workers(workers, p.flush_denormals, [&](int w) {
    const auto [r0, r1] = split_range(p.N, workers, w);
    dWt[w].setZero(H, K);
    db[w].setZero(K);
    loss[w] = head_rows(p, out, Wp, WTp, bias_padded.data(), r0, r1, dWt[w], db[w]);
  });
  double total = loss[0];
  for (int w = 1; w < workers; ++w) {
    dWt[0] += dWt[w];
    db[0] += db[w];
    total += loss[w];
  }
  dW_out = dWt[0];
  db_out = db[0];
  return total;
}

}  // namespace fastrnn
