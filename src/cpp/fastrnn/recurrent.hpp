// Forward and backpropagation through time for rnn, lstm and gru: header-only, templated
// on the scalar type, no Python types. The meaning is the kernel contract of DESIGN.md
// section 2 (PyTorch's parameters and gate order; `lengths` as packed sequences).
//
// Layout: every (steps, B, n) array is read as the column-major (n, steps*B) matrix it is
// in memory, so a step of a batch chunk [b0, b1) is a contiguous (n, b1-b0) block and the
// per-step products are W (G*H x H) times state columns ("feature-major").
//
// Structure (DESIGN.md section 3):
//   forward:  1. input projection of all steps, one GEMM (rows of steps*B split over
//                threads);
//             2. each thread runs its own time loop over a contiguous chunk of sequences:
//                one packed product for all gates (small_gemm), then the fused gate math;
//   backward: 1. each thread runs the dh recurrence over its chunk, writing the
//                pre-activation gradients dA of every step;
//             2. dx = dA W_ih, dW_ih = dA^T X, dW_hh = dA^T H_prev and the bias sums as
//                one GEMM each, split over threads by output rows (no reduction needed).
// Saved for backward beyond hs: rnn nothing; lstm the gate activations and cell states
// (5H per step and sequence); gru the gate activations and W_hn h + b_hn (4H).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "parallel.hpp"
#include "small_gemm.hpp"

namespace fastrnn {

enum class Cell { rnn, lstm, gru };
enum class Activation { tanh, relu, leaky_relu, identity };

inline Index gates_of(Cell cell) { return cell == Cell::rnn ? 1 : (cell == Cell::lstm ? 4 : 3); }

template <class T>
struct Problem {
  Cell cell = Cell::rnn;
  Activation activation = Activation::tanh;
  T slope = T(0.01);
  Index steps = 0, B = 0, D = 0, H = 0;
  const T* W_ih = nullptr;  // (G*H, D) row-major
  const T* W_hh = nullptr;  // (G*H, H)
  const T* b_ih = nullptr;  // (G*H,)
  const T* b_hh = nullptr;
  const T* x = nullptr;              // (steps, B, D)
  const T* h0 = nullptr;             // (B, H)
  const T* c0 = nullptr;             // (B, H), lstm only
  const std::int64_t* lengths = nullptr;  // (B,) in 1..steps, or null: all have length steps
  int num_threads = 1;
  bool flush_denormals = true;
};

template <class T>
struct ForwardOutput {
  T* hs = nullptr;     // (steps, B, H)
  T* h_n = nullptr;    // (B, H)
  T* c_n = nullptr;    // (B, H), lstm
  T* gates = nullptr;  // (steps, B, G*H), lstm and gru: gate activations
  T* extra = nullptr;  // (steps, B, H): lstm cell states, gru W_hn h + b_hn
};

template <class T>
struct BackwardInput {
  const T* hs = nullptr;
  const T* gates = nullptr;
  const T* extra = nullptr;
  const T* dhs = nullptr;   // (steps, B, H)
  const T* dh_n = nullptr;  // (B, H)
  const T* dc_n = nullptr;  // (B, H), lstm
};

template <class T>
struct BackwardOutput {
  T* dx = nullptr;     // (steps, B, D)
  T* dh0 = nullptr;    // (B, H)
  T* dc0 = nullptr;    // (B, H), lstm
  T* dW_ih = nullptr;  // like W_ih
  T* dW_hh = nullptr;
  T* db_ih = nullptr;
  T* db_hh = nullptr;
  T* norms = nullptr;  // (steps, B) or null
};

namespace detail {

template <class T>
using Arr = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using ArrMap = Eigen::Map<Arr<T>>;
template <class T>
using ConstArrMap = Eigen::Map<const Arr<T>>;
template <class T>
using StridedArrMap = Eigen::Map<Arr<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MatMap = Eigen::Map<Mat<T>>;
template <class T>
using ConstMatMap = Eigen::Map<const Mat<T>>;

// An uninitialised scratch array; large ones ask Linux for transparent huge pages (as
// NumPy does for its arrays), which makes first touch of a big buffer several times cheaper.
template <class T>
class LargeBuffer {
 public:
  explicit LargeBuffer(Index n) {
    if (n <= 0) return;
    constexpr std::size_t kHuge = std::size_t(1) << 21;
    std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
    if (bytes >= 4 * kHuge) {
      bytes = (bytes + kHuge - 1) / kHuge * kHuge;
      data_ = static_cast<T*>(std::aligned_alloc(kHuge, bytes));
#ifdef MADV_HUGEPAGE
      if (data_) madvise(data_, bytes, MADV_HUGEPAGE);
#endif
    } else {
      data_ = static_cast<T*>(std::malloc(bytes));
    }
    if (!data_) throw std::bad_alloc();
  }
  ~LargeBuffer() { std::free(data_); }
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;
  T* get() const { return data_; }

 private:
  T* data_ = nullptr;
};

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

// Which sequences of the chunk [b0, b0+nb) are still running at step t.
struct ChunkMask {
  const std::int64_t* lengths;  // already offset to b0, or null
  Index nb;
  Index all_active_until;  // every sequence of the chunk is active for t < this

  ChunkMask(const std::int64_t* lens, Index b0, Index count, Index steps)
      : lengths(lens ? lens + b0 : nullptr), nb(count), all_active_until(steps) {
    if (lengths)
      for (Index j = 0; j < nb; ++j) all_active_until = std::min<Index>(all_active_until, lengths[j]);
  }
  bool all_active(Index t) const { return t < all_active_until; }
  bool active(Index t, Index j) const { return !lengths || t < lengths[j]; }
  template <class M>
  void zero_inactive(Index t, M&& m) const {
    if (all_active(t)) return;
    for (Index j = 0; j < nb; ++j)
      if (!active(t, j)) m.col(j).setZero();
  }
  // Columns of `fresh` for finished sequences take the value of `carried`.
  template <class M1, class M2>
  void carry_inactive(Index t, M1&& fresh, const M2& carried) const {
    if (all_active(t)) return;
    for (Index j = 0; j < nb; ++j)
      if (!active(t, j)) fresh.col(j) = carried.col(j);
  }
};

template <class T>
void activate(Activation act, T slope, ArrMap<T>& out, const StridedArrMap<T>& rec) {
  switch (act) {
    case Activation::tanh:
      out = (out + rec).tanh();
      break;
    case Activation::relu:
      out = (out + rec).max(T(0));
      break;
    case Activation::leaky_relu:
      out += rec;
      if (slope <= T(1))
        out = out.max(out * slope);
      else
        out = out.min(out * slope);
      break;
    case Activation::identity:
      out += rec;
      break;
  }
}

// dA = dh * act'(a), act' written in terms of h = act(a).
template <class T, class DH>
void activation_grad(Activation act, T slope, ArrMap<T>& dA, const DH& dh,
                     const ConstArrMap<T>& h) {
  switch (act) {
    case Activation::tanh:
      dA = dh * (T(1) - h * h);
      break;
    case Activation::relu:
      dA = (h > T(0)).select(dh, T(0));
      break;
    case Activation::leaky_relu:
      dA = (h > T(0)).select(dh, dh * slope);
      break;
    case Activation::identity:
      dA = dh;
      break;
  }
}

// --- forward time loops over the chunk [b0, b0 + nb) ------------------------------------

template <class T>
void rnn_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                       const PackedMatrix<T>& W, Index b0, Index nb) {
  const Index H = p.H, B = p.B;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), H, nb, Eigen::OuterStride<>(W.ld));
  const T* h_prev = p.h0 + b0 * H;
  for (Index t = 0; t < p.steps; ++t) {
    T* h_ptr = out.hs + (t * B + b0) * H;
    if (t + 1 < p.steps) prefetch(h_ptr + B * H, H * nb);
    small_gemm(W, h_prev, H, rec_buf.data(), W.ld, nb);  // W h_{t-1}
    ArrMap<T> h(h_ptr, H, nb);                             // holds U x_t + b
    activate(p.activation, p.slope, h, rec);               // h_t = act(U x_t + W h_{t-1} + b)
    mask.zero_inactive(t, h);
    h_prev = h_ptr;
  }
}

template <class T>
void lstm_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                        const PackedMatrix<T>& W, Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 4 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), GH, nb, Eigen::OuterStride<>(W.ld));
  const T* h_prev = p.h0 + b0 * H;
  const T* c_prev = p.c0 + b0 * H;
  for (Index t = 0; t < p.steps; ++t) {
    const Index off = (t * B + b0);
    if (t + 1 < p.steps) prefetch(out.gates + (off + B) * GH, GH * nb);
    small_gemm(W, h_prev, H, rec_buf.data(), W.ld, nb);
    ArrMap<T> g(out.gates + off * GH, GH, nb);  // holds U x_t + b, becomes i, f, g, o
    g.topRows(2 * H) = (g.topRows(2 * H) + rec.topRows(2 * H)).logistic();
    g.middleRows(2 * H, H) = (g.middleRows(2 * H, H) + rec.middleRows(2 * H, H)).tanh();
    g.bottomRows(H) = (g.bottomRows(H) + rec.bottomRows(H)).logistic();
    ArrMap<T> c(out.extra + off * H, H, nb);
    ArrMap<T> h(out.hs + off * H, H, nb);
    const ConstArrMap<T> cp(c_prev, H, nb);
    c = g.middleRows(H, H) * cp + g.topRows(H) * g.middleRows(2 * H, H);  // f c + i g
    h = g.bottomRows(H) * c.tanh();                                       // o tanh(c)
    mask.zero_inactive(t, h);
    h_prev = h.data();
    c_prev = c.data();
  }
}

template <class T>
void gru_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                       const PackedMatrix<T>& W, Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 3 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), GH, nb, Eigen::OuterStride<>(W.ld));
  const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> b_hh(p.b_hh, GH);
  const T* h_prev = p.h0 + b0 * H;
  for (Index t = 0; t < p.steps; ++t) {
    const Index off = (t * B + b0);
    if (t + 1 < p.steps) prefetch(out.gates + (off + B) * GH, GH * nb);
    small_gemm(W, h_prev, H, rec_buf.data(), W.ld, nb);
    ArrMap<T> g(out.gates + off * GH, GH, nb);  // holds W_i. x_t + b_i., becomes r, z, n
    g.topRows(2 * H) = ((g.topRows(2 * H) + rec.topRows(2 * H)).colwise() + b_hh.head(2 * H))
                           .logistic();
    ArrMap<T> hn(out.extra + off * H, H, nb);  // W_hn h + b_hn
    hn = rec.bottomRows(H).colwise() + b_hh.tail(H);
    g.bottomRows(H) = (g.bottomRows(H) + g.topRows(H) * hn).tanh();
    ArrMap<T> h(out.hs + off * H, H, nb);
    const ConstArrMap<T> hp(h_prev, H, nb);
    h = g.bottomRows(H) + g.middleRows(H, H) * (hp - g.bottomRows(H));  // n + z (h - n)
    mask.zero_inactive(t, h);
    h_prev = h.data();
  }
}

// --- backward time loops -------------------------------------------------------------

// Scratch of one chunk's dh recurrence: the running dL/dh (padded rows, swapped with the
// product buffer every step) and temporaries of the gate math.
template <class T>
struct ChunkScratch {
  Index ld, H, nb;
  std::vector<T> a, b, dht, extra1, extra2;
  T* dh;
  T* rec;
  ChunkScratch(Index ld_, Index H_, Index nb_)
      : ld(ld_), H(H_), nb(nb_), a(ld_ * nb_), b(ld_ * nb_), dht(H_ * nb_), dh(a.data()),
        rec(b.data()) {}
  StridedArrMap<T> dh_map() { return StridedArrMap<T>(dh, H, nb, Eigen::OuterStride<>(ld)); }
  StridedArrMap<T> rec_map() { return StridedArrMap<T>(rec, H, nb, Eigen::OuterStride<>(ld)); }
  void swap() { std::swap(dh, rec); }
};

template <class T, class M>
void store_norms(const BackwardOutput<T>& g, Index t, Index B, Index b0, const M& dht) {
  if (!g.norms) return;
  for (Index j = 0; j < dht.cols(); ++j) g.norms[t * B + b0 + j] = dht.col(j).matrix().norm();
}

template <class T>
void rnn_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                        const BackwardOutput<T>& g, const PackedMatrix<T>& WT, T* dA_all, Index b0,
                        Index nb) {
  const Index H = p.H, B = p.B;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  ArrMap<T> dht(s.dht.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    if (t > 0) {
      prefetch(in.dhs + (off - B) * H, H * nb);
      prefetch(in.hs + (off - B) * H, H * nb);
    }
    const ConstArrMap<T> dhs_t(in.dhs + off * H, H, nb), h(in.hs + off * H, H, nb);
    ArrMap<T> dA(dA_all + off * H, H, nb);
    if (g.norms || !mask.all_active(t)) {
      dht = s.dh_map() + dhs_t;  // dL/dh_t
      mask.zero_inactive(t, dht);
      store_norms(g, t, B, b0, dht);
      activation_grad(p.activation, p.slope, dA, dht, h);
    } else {  // the same in one pass
      activation_grad(p.activation, p.slope, dA, s.dh_map() + dhs_t, h);
    }
    small_gemm(WT, dA.data(), H, s.rec, WT.ld, nb);  // dL/dh_{t-1} = W^T dA_t
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
}

template <class T>
void lstm_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                         const BackwardOutput<T>& g, const PackedMatrix<T>& WT, T* dA_all,
                         Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 4 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  std::vector<T> dc_buf(in.dc_n + b0 * H, in.dc_n + (b0 + nb) * H);
  s.extra1.resize(H * nb);
  s.extra2.resize(H * nb);
  ArrMap<T> dc(dc_buf.data(), H, nb), dht(s.dht.data(), H, nb);
  ArrMap<T> tc(s.extra1.data(), H, nb), dct(s.extra2.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    const ConstArrMap<T> gt(in.gates + off * GH, GH, nb);
    const auto i = gt.topRows(H), f = gt.middleRows(H, H), gg = gt.middleRows(2 * H, H),
               o = gt.bottomRows(H);
    if (t > 0) {
      prefetch(in.dhs + (off - B) * H, H * nb);
      prefetch(in.gates + (off - B) * GH, GH * nb);
      if (t > 1) prefetch(in.extra + (off - 2 * B) * H, H * nb);
    }
    const ConstArrMap<T> c(in.extra + off * H, H, nb);
    const ConstArrMap<T> c_prev(t > 0 ? in.extra + (off - B) * H : p.c0 + b0 * H, H, nb);
    dht = s.dh_map() + ConstArrMap<T>(in.dhs + off * H, H, nb);  // dL/dh_t
    mask.zero_inactive(t, dht);
    store_norms(g, t, B, b0, dht);
    tc = c.tanh();
    ArrMap<T> dA(dA_all + off * GH, GH, nb);
    dA.bottomRows(H) = dht * tc * o * (T(1) - o);           // do, through sigmoid
    dct = dc + dht * o * (T(1) - tc * tc);                  // dL/dc_t
    mask.zero_inactive(t, dct);
    dA.topRows(H) = dct * gg * i * (T(1) - i);              // di
    dA.middleRows(H, H) = dct * c_prev * f * (T(1) - f);    // df
    dA.middleRows(2 * H, H) = dct * i * (T(1) - gg * gg);  // dg, through tanh
    small_gemm(WT, dA.data(), GH, s.rec, WT.ld, nb);       // dL/dh_{t-1} = W_hh^T dA_t
    if (mask.all_active(t)) {
      dc = dct * f;  // dL/dc_{t-1}
    } else {
      for (Index j = 0; j < nb; ++j)
        if (mask.active(t, j)) dc.col(j) = dct.col(j) * f.col(j);
    }
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
  ArrMap<T>(g.dc0 + b0 * H, H, nb) = dc;
}

template <class T>
void gru_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                        const BackwardOutput<T>& g, const PackedMatrix<T>& WT, T* dA_in_all,
                        T* dA_rec_all, Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 3 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  ArrMap<T> dht(s.dht.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    const ConstArrMap<T> gt(in.gates + off * GH, GH, nb);
    const auto r = gt.topRows(H), z = gt.middleRows(H, H), n = gt.bottomRows(H);
    if (t > 0) {
      prefetch(in.dhs + (off - B) * H, H * nb);
      prefetch(in.gates + (off - B) * GH, GH * nb);
      prefetch(in.extra + (off - B) * H, H * nb);
      if (t > 1) prefetch(in.hs + (off - 2 * B) * H, H * nb);
    }
    const ConstArrMap<T> hn(in.extra + off * H, H, nb);
    const ConstArrMap<T> h_prev(t > 0 ? in.hs + (off - B) * H : p.h0 + b0 * H, H, nb);
    dht = s.dh_map() + ConstArrMap<T>(in.dhs + off * H, H, nb);  // dL/dh_t
    mask.zero_inactive(t, dht);
    store_norms(g, t, B, b0, dht);
    ArrMap<T> dA_in(dA_in_all + off * GH, GH, nb), dA_rec(dA_rec_all + off * GH, GH, nb);
    dA_in.bottomRows(H) = dht * (T(1) - z) * (T(1) - n * n);              // dn, through tanh
    dA_in.middleRows(H, H) = dht * (h_prev - n) * z * (T(1) - z);         // dz
    dA_in.topRows(H) = dA_in.bottomRows(H) * hn * r * (T(1) - r);         // dr
    dA_rec.topRows(2 * H) = dA_in.topRows(2 * H);                         // r, z: both sides
    dA_rec.bottomRows(H) = dA_in.bottomRows(H) * r;                       // n: gated by r
    small_gemm(WT, dA_rec.data(), GH, s.rec, WT.ld, nb);
    s.rec_map() += dht * z;  // dL/dh_{t-1} = W_hh^T dA_rec + dh z
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
}

template <class T>
int workers_for(const Problem<T>& p, Index items) {
  return static_cast<int>(std::max<Index>(1, std::min<Index>(p.num_threads, items)));
}

}  // namespace detail

// --- entry points ----------------------------------------------------------------------

template <class T>
void forward(const Problem<T>& p, const ForwardOutput<T>& out) {
  using namespace detail;
  const Index H = p.H, B = p.B, D = p.D, GH = gates_of(p.cell) * H, TB = p.steps * B;
  T* pre = p.cell == Cell::rnn ? out.hs : out.gates;  // (GH, TB): U x_t + b for every step
  Eigen::Matrix<T, Eigen::Dynamic, 1> bias = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(p.b_ih, GH);
  if (p.cell != Cell::gru) bias += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(p.b_hh, GH);
  const int proj_workers = workers_for(p, TB);
  // With whole packets of rows, the panel kernel streams x once with W_ih in cache and the
  // bias folded in (1.5x Eigen's GEMM here, which packs all of x first); else Eigen.
  const bool panels = GH % SimdTraits<T>::size == 0;
  PackedMatrix<T> W_in;
  if (panels) W_in.from_row_major(p.W_ih, GH, D);
  run_workers(proj_workers, p.flush_denormals, [&](int w) {
    const auto [c0, c1] = split_range(TB, proj_workers, w);
    if (panels) return small_gemm(W_in, p.x + c0 * D, D, pre + c0 * GH, GH, c1 - c0, bias.data());
    MatMap<T> A(pre + c0 * GH, GH, c1 - c0);
    A.colwise() = bias;  // then += the product: no separate zeroing pass
    A.noalias() += ConstMatMap<T>(p.W_ih, D, GH).transpose() * ConstMatMap<T>(p.x + c0 * D, D, c1 - c0);
  });
  PackedMatrix<T> W;
  W.from_row_major(p.W_hh, GH, H);
  const int workers = workers_for(p, B);
  run_workers(workers, p.flush_denormals, [&](int w) {
    const auto [b0, b1] = split_range(B, workers, w);
    if (p.cell == Cell::rnn) rnn_forward_chunk(p, out, W, b0, b1 - b0);
    if (p.cell == Cell::lstm) lstm_forward_chunk(p, out, W, b0, b1 - b0);
    if (p.cell == Cell::gru) gru_forward_chunk(p, out, W, b0, b1 - b0);
  });
  // final states: after each sequence's last real step
  for (Index b = 0; b < B; ++b) {
    const Index last = p.lengths ? static_cast<Index>(p.lengths[b]) - 1 : p.steps - 1;
    std::copy_n(out.hs + (last * B + b) * H, H, out.h_n + b * H);
    if (p.cell == Cell::lstm) std::copy_n(out.extra + (last * B + b) * H, H, out.c_n + b * H);
  }
}

template <class T>
void backward(const Problem<T>& p, const BackwardInput<T>& in, const BackwardOutput<T>& g) {
  using namespace detail;
  const Index H = p.H, B = p.B, D = p.D, GH = gates_of(p.cell) * H, TB = p.steps * B;
  // every entry is written by the time loops: no need to zero these
  LargeBuffer<T> dA_buf(GH * TB), dA_rec_buf(p.cell == Cell::gru ? GH * TB : 0);
  T* dA_in = dA_buf.get();
  T* dA_rec = p.cell == Cell::gru ? dA_rec_buf.get() : dA_in;
  PackedMatrix<T> WT;  // W_hh^T, (H x GH)
  WT.from_row_major_transposed(p.W_hh, H, GH);
  const int workers = workers_for(p, B);
  run_workers(workers, p.flush_denormals, [&](int w) {
    const auto [b0, b1] = split_range(B, workers, w);
    if (p.cell == Cell::rnn) rnn_backward_chunk(p, in, g, WT, dA_in, b0, b1 - b0);
    if (p.cell == Cell::lstm) lstm_backward_chunk(p, in, g, WT, dA_in, b0, b1 - b0);
    if (p.cell == Cell::gru)
      gru_backward_chunk(p, in, g, WT, dA_in, dA_rec, b0, b1 - b0);
  });
  // Weight gradients and dx: the GEMMs dx = W_ih^T dA, dW_ih = dA^T X, dW_hh = dA^T H_prev
  // and the bias sums over all steps, evaluated block by block of steps*B columns so that
  // each block of dA is read from memory once and then from cache by all of them (three
  // separate full-size GEMMs ran memory-bound, at half the speed). Workers take contiguous
  // ranges of blocks and sum into their own partial weight gradients, reduced at the end.
  const ConstMatMap<T> dA(dA_in, GH, TB), dAr(dA_rec, GH, TB);
  const Index block = std::clamp<Index>(49152 / GH, 64, 1024);  // ~200 KB of dA: in L2
  const Index blocks = (TB + block - 1) / block;
  const int grad_workers = workers_for(p, blocks);
  const bool separate_rec = p.cell == Cell::gru;  // rnn, lstm: dA_rec is dA
  std::vector<Mat<T>> part_ih(grad_workers), part_hh(grad_workers);
  std::vector<Mat<T>> part_b(grad_workers);  // columns: db_ih, db_hh
  // the panel kernel where rows come in whole packets (no packing of the big operands)
  constexpr Index P = SimdTraits<T>::size;
  const bool d_panels = D % P == 0, h_panels = H % P == 0;
  PackedMatrix<T> W_ih_T;  // (D x GH)
  if (d_panels) W_ih_T.from_row_major_transposed(p.W_ih, D, GH);
  run_workers(grad_workers, p.flush_denormals, [&](int w) {
    const auto [k0, k1] = split_range(blocks, grad_workers, w);
    Mat<T>& dW_ih = part_ih[w];
    Mat<T>& dW_hh = part_hh[w];
    Mat<T>& db = part_b[w];
    dW_ih.setZero(D, GH);
    dW_hh.setZero(H, GH);
    db.setZero(GH, 2);
    const ConstMatMap<T> W_ih(p.W_ih, D, GH), X(p.x, D, TB), h0(p.h0, H, B), hs(in.hs, H, TB);
    for (Index k = k0; k < k1; ++k) {
      const Index c0 = k * block, n = std::min(block, TB - c0);
      const auto dAb = dA.middleCols(c0, n);
      const auto dArb = dAr.middleCols(c0, n);
      if (d_panels) {
        small_gemm(W_ih_T, dA_in + c0 * GH, GH, g.dx + c0 * D, D, n);
        panel_gemm<T, true, true>({p.x + c0 * D, D, dA_in + c0 * GH, GH, dW_ih.data(), D, n, nullptr},
                                  D, GH);
      } else {
        MatMap<T>(g.dx + c0 * D, D, n).noalias() = W_ih * dAb;
        dW_ih.noalias() += X.middleCols(c0, n) * dAb.transpose();
      }
      // H_prev column c is h0 column c for c < B, else hs column c - B
      const Index from_h0 = std::clamp<Index>(B - c0, 0, n);
      if (h_panels) {
        if (from_h0 > 0)
          panel_gemm<T, true, true>(
              {p.h0 + c0 * H, H, dA_rec + c0 * GH, GH, dW_hh.data(), H, from_h0, nullptr}, H, GH);
        if (from_h0 < n)
          panel_gemm<T, true, true>({in.hs + (c0 + from_h0 - B) * H, H,
                                     dA_rec + (c0 + from_h0) * GH, GH, dW_hh.data(), H,
                                     n - from_h0, nullptr},
                                    H, GH);
      } else {
        if (from_h0 > 0)
          dW_hh.noalias() += h0.middleCols(c0, from_h0) * dArb.leftCols(from_h0).transpose();
        if (from_h0 < n)
          dW_hh.noalias() += hs.middleCols(c0 + from_h0 - B, n - from_h0) *
                             dArb.rightCols(n - from_h0).transpose();
      }
      for (Index c = 0; c < n; ++c) db.col(0) += dAb.col(c);
      if (separate_rec)
        for (Index c = 0; c < n; ++c) db.col(1) += dArb.col(c);
    }
  });
  MatMap<T> dW_ih(g.dW_ih, D, GH), dW_hh(g.dW_hh, H, GH);
  Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> db_ih(g.db_ih, GH), db_hh(g.db_hh, GH);
  dW_ih = part_ih[0];
  dW_hh = part_hh[0];
  db_ih = part_b[0].col(0);
  db_hh = part_b[0].col(separate_rec ? 1 : 0);
  for (int w = 1; w < grad_workers; ++w) {
    dW_ih += part_ih[w];
    dW_hh += part_hh[w];
    db_ih += part_b[w].col(0);
    db_hh += part_b[w].col(separate_rec ? 1 : 0);
  }
}

}  // namespace fastrnn
