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

#include "blas.hpp"
#include "memory.hpp"
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

// Transposes the first np columns (np a whole number of packets) of Z (Kp x np, leading
// dimension ldz, Kp a whole number of packets) into Zt (np x Kp, leading dimension ldt),
// P x P tiles at a time in registers.
template <class T>
void transpose_packets(const T* Z, Index ldz, Index Kp, Index np, T* Zt, Index ldt) {
  using namespace Eigen::internal;
  using Packet = typename SimdTraits<T>::Packet;
  constexpr int P = SimdTraits<T>::size;
  for (Index i = 0; i < Kp; i += P)
    for (Index j = 0; j < np; j += P) {
      PacketBlock<Packet, P> tile;
      for (int l = 0; l < P; ++l) tile.packet[l] = ploadu<Packet>(Z + (j + l) * ldz + i);
      ptranspose(tile);
      for (int l = 0; l < P; ++l) pstoreu(Zt + (i + l) * ldt + j, tile.packet[l]);
    }
}

// W (K x H) and W^T (H x K) packed once for every worker and block of rows, rows padded to
// whole packets, and the bias padded likewise; or, when BLAS takes every product
// (blas.hpp's blas_takes_all: the generic module beside a far wider BLAS), the BLAS
// functions, with which the blocks' three products go to BLAS on p.weight as given.
template <class T>
struct HeadWeights {
  PackedMatrix<T> W, WT;
  std::vector<T> bias;
  BlasFunctions blas;
  bool by_blas;
  HeadWeights(const HeadProblem<T>& p, const BlasFunctions& f)
      : blas(f), by_blas(blas_takes_all(f)) {
    if (!by_blas) {
      W.from_row_major(p.weight, p.K, p.H);
      WT.from_row_major_transposed(p.weight, p.H, p.K);
    }
    bias.assign(static_cast<std::size_t>(padded_rows<T>(p.K)), T(0));
    std::copy_n(p.bias, p.K, bias.begin());
  }
};

// One worker's rows [r0, r1): adds its share of dW^T (H x K, column-major) and db into
// dWt and db, writes its rows of dh, and returns its share of the loss.
//
// The logits of a block come out of the packed product with the classes as SIMD lanes (a
// column per row), are transposed in registers so that the rows become the lanes, and the
// softmax then runs across the class rows with no horizontal reduction: P rows' max, exp,
// sum, log and gradient at once. The gradient products read dz in that layout.
template <class T>
double head_rows(const HeadProblem<T>& p, const HeadOutput<T>& out, const HeadWeights<T>& w,
                 Index r0, Index r1,
                 AlignedMat<T>& dWt, Eigen::Matrix<T, Eigen::Dynamic, 1>& db) {
  using namespace Eigen::internal;
  using Packet = typename SimdTraits<T>::Packet;
  using StridedMat = Eigen::Map<AlignedMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  const PackedMatrix<T>& Wp = w.W;
  const PackedMatrix<T>& WTp = w.WT;
  const Index H = p.H, K = p.K, Kp = padded_rows<T>(K), Hp = padded_rows<T>(H);
  constexpr Index P = SimdTraits<T>::size;
  constexpr Index Q = std::max<Index>(P, SimdTraits<T>::NR);  // both powers of two
  const bool h_panels = H % P == 0;
  const bool stream = worth_streaming(p.N * H * static_cast<Index>(sizeof(T)));  // dh
  // a block of logits of about 32 KB (L1), a whole number of packets and register tiles
  const Index block =
      std::clamp<Index>(32768 / static_cast<Index>(sizeof(T) * std::max(Kp, Hp)) / Q * Q, Q, 512);
  AlignedMat<T> Z = AlignedMat<T>::Zero(Kp, block);  // logits, a column per row
  AlignedMat<T> Zt(block, Kp);  // logits, then dz: a column per class, rows as lanes
  AlignedMat<T> dh_block(Hp, block);                    // dh, rows padded
  AlignedMat<T> db_lanes = AlignedMat<T>::Zero(P, K);  // db, per lane
  alignas(64) T picked[P], weight[P];
  Index target[P];
  double loss = 0.0;
  for (Index c0 = r0; c0 < r1; c0 += block) {
    const Index n = std::min(block, r1 - c0), np = (n + P - 1) / P * P;
    const T* hb = p.h + c0 * H;
    if (w.by_blas) {  // z = W h + b, column per row (rows K..Kp stay 0)
      gemm(w.blas, 'T', 'N', K, n, H, T(1), p.weight, H, hb, H, T(0), Z.data(), Kp);
      Z.topLeftCorner(K, n).colwise() +=
          Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(w.bias.data(), K);
    } else {
      small_gemm(Wp, hb, H, Z.data(), Kp, n, w.bias.data());
    }
    Z.middleCols(n, np - n).setZero();  // rows past the end: weight 0, finite logits
    transpose_packets(Z.data(), Kp, Kp, np, Zt.data(), block);
    // the next block's h, a share per packet of rows below: the dh stores of this block
    // would otherwise delay the hardware's own prefetch of it
    const Index next = std::min(block, r1 - c0 - n) * H, share = (next + np / P - 1) / (np / P);
    for (Index j = 0; j < np; j += P) {
      const Index ahead = j / P * share;
      prefetch(hb + n * H + ahead, std::max<Index>(0, std::min(share, next - ahead)));
      T* zt = Zt.data() + j;  // class k of these P rows at zt[k * block]
      for (Index l = 0; l < P; ++l) {
        const bool real = j + l < n;
        target[l] = real ? static_cast<Index>(p.targets[c0 + j + l]) : 0;
        weight[l] = !real ? T(0) : (p.row_weights ? p.scale * p.row_weights[c0 + j + l] : p.scale);
        picked[l] = zt[target[l] * block + l];
      }
      Packet m = ploadu<Packet>(zt);
      for (Index k = 1; k < K; ++k) m = pmax(m, ploadu<Packet>(zt + k * block));
      Packet sum = pset1<Packet>(T(0));
      for (Index k = 0; k < K; ++k) {
        const Packet e = pexp(psub(ploadu<Packet>(zt + k * block), m));
        pstoreu(zt + k * block, e);
        sum = padd(sum, e);
      }
      const Packet w = pload<Packet>(weight);
      // w (logsumexp(z) - z_y), with logsumexp(z) = m + log(sum)
      loss += static_cast<double>(predux(pmul(w, psub(plog(sum), psub(pload<Packet>(picked), m)))));
      const Packet r = pdiv(w, sum);
      for (Index k = 0; k < K; ++k) {  // dz = w softmax - w onehot, and db
        const Packet dz = pmul(ploadu<Packet>(zt + k * block), r);
        pstoreu(zt + k * block, dz);
        pstore(db_lanes.data() + k * P, padd(pload<Packet>(db_lanes.data() + k * P), dz));
      }
      for (Index l = 0; l < P; ++l) {
        zt[target[l] * block + l] -= weight[l];
        db_lanes(l, target[l]) -= weight[l];
      }
    }
    // dW^T += h_blk dz^T (dz (n x K), leading dimension block), then dh_blk = W^T dz^T
    if (w.by_blas) {
      gemm(w.blas, 'N', 'N', H, K, n, T(1), hb, H, Zt.data(), block, T(1), dWt.data(), H);
      gemm(w.blas, 'N', 'T', H, n, K, T(1), p.weight, H, Zt.data(), block, T(0),
           dh_block.data(), Hp);
    } else {
      if (h_panels) {
        panel_gemm<T, false, true>({hb, H, Zt.data(), block, dWt.data(), H, n, nullptr}, H, K);
      } else {
        const StridedMat dz(Zt.data(), n, K, Eigen::OuterStride<>(block));
        dWt.noalias() += Eigen::Map<const AlignedMat<T>>(hb, H, n) * dz;
      }
      small_gemm<T, true>(WTp, Zt.data(), block, dh_block.data(), Hp, n);
    }
    T* dh = out.dh + c0 * H;
    if (H == Hp && stream) {
      stream_copy(dh_block.data(), n * H, dh);
    } else {
      Eigen::Map<AlignedMat<T>>(dh, H, n) = dh_block.topLeftCorner(H, n);
    }
  }
  if (stream) stream_fence();
  db += db_lanes.colwise().sum().transpose();
  return loss;
}

// One worker's partial sums of the head's gradients and loss: dW^T (H x K), db, the loss
// (float64). rows() adds the rows [r0, r1) of p (writing their dh to out.dh); a fixed order
// of calls and a fixed order of the workers' sums give the same bits every time.
template <class T>
struct HeadSums {
  AlignedMat<T> dWt;
  Eigen::Matrix<T, Eigen::Dynamic, 1> db;
  double loss = 0.0;
  explicit HeadSums(const HeadProblem<T>& p) : dWt(AlignedMat<T>::Zero(p.H, p.K)),
                                               db(Eigen::Matrix<T, Eigen::Dynamic, 1>::Zero(p.K)) {}
  void rows(const HeadProblem<T>& p, const HeadOutput<T>& out, const HeadWeights<T>& w,
            Index r0, Index r1) {
    loss += head_rows(p, out, w, r0, r1, dWt, db);
  }
  // the workers' sums, added in worker order into out.dweight, out.dbias; returns the loss
  static double reduce(std::vector<HeadSums>& parts, const HeadOutput<T>& out, Index H, Index K) {
    double total = parts[0].loss;
    for (std::size_t w = 1; w < parts.size(); ++w) {
      parts[0].dWt += parts[w].dWt;
      parts[0].db += parts[w].db;
      total += parts[w].loss;
    }
    Eigen::Map<AlignedMat<T>>(out.dweight, H, K) = parts[0].dWt;  // (K, H) row-major: dW^T
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(out.dbias, K) = parts[0].db;
    return total;
  }
};

}  // namespace detail

// Runs the head; fills `out` and returns the loss.
template <class T>
double linear_cross_entropy(const HeadProblem<T>& p, const HeadOutput<T>& out) {
  using namespace detail;
  const Index H = p.H, K = p.K;
  if (p.N == 0) {
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(out.dbias, K).setZero();
    Eigen::Map<AlignedMat<T>>(out.dweight, H, K).setZero();
    return 0.0;
  }
  const HeadWeights<T> weights(p, current_blas());
  const BlasSingleThreaded blas_threads(weights.blas, weights.by_blas);
  // a worker only for at least ~4 M multiply-adds of work (thread start-up is ~30 us)
  const Index min_rows = std::max<Index>(1, (Index(1) << 22) / (3 * H * K + 1));
  const int workers =
      static_cast<int>(std::clamp<Index>(p.N / min_rows, 1, std::max(1, p.num_threads)));
  std::vector<HeadSums<T>> parts(workers, HeadSums<T>(p));
  run_workers(workers, p.flush_denormals, [&](int w) {
    const auto [r0, r1] = split_range(p.N, workers, w);
    parts[w].rows(p, out, weights, r0, r1);
  });
  return HeadSums<T>::reduce(parts, out, H, K);
}

}  // namespace fastrnn
