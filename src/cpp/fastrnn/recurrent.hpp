// Forward and backpropagation through time for rnn, lstm and gru: header-only, templated
// on the scalar type, no Python types. The meaning is the kernel contract of docs/design.md
// ("The kernel contract": PyTorch's parameters and gate order; `lengths` as packed sequences).
//
// Layout: every (steps, B, n) array is read as the column-major (n, steps*B) matrix it is
// in memory, so a step of a batch chunk [b0, b1) is a contiguous (n, b1-b0) block and the
// per-step products are W (G*H x H) times state columns ("feature-major").
//
// Structure (docs/design.md, "Performance principles"):
//   forward:  1. input projection of all steps, one GEMM (rows of steps*B split over
//                threads);
//             2. each thread runs its own time loop over a contiguous chunk of sequences:
//                one packed product for all gates (small_gemm), then the fused gate math;
//   backward: each thread runs the dh recurrence over its chunk, backwards in time, writing
//             the pre-activation gradients dA of each step into a small block of steps
//             (GradBlocks); when a block is complete, dx = W_ih^T dA, dW_ih += X dA^T,
//             dW_hh += H_prev dA^T and the bias sums run on it while it is in cache. No dA of
//             all steps is ever stored; each thread's partial weight gradients are summed
//             at the end in a fixed order.
// Token ids (Problem::ids, one-hot input): the projection gathers W_ih's columns, dW_ih is a
// scatter-add of dA into the ids' columns, and there is no dx (BackwardOutput::dx null skips
// it for a float x too).
// Saved for backward beyond hs: rnn nothing; lstm the gate activations and cell states
// (5H per step and sequence); gru the gate activations and W_hn h + b_hn (4H).
// Checkpointed BPTT (Problem::checkpoint = k > 0, lstm and gru): the forward saves only
// lstm's cell state before every k-th step (gru nothing: h_{t-1} is in hs); each backward
// worker recomputes a segment of k steps of its chunk, newest first, with the forward's own
// step loop into one reused segment buffer (SavedSteps), then runs the backward steps over
// it. The weight gradients are reduced in GradBlocks aligned at t = 0, whatever k is, and
// every product takes the same path as in full BPTT, so the gradients are bit-identical.
// The fused output head (BackwardInput::head): dL/dh_t is the head's gradient (head.hpp's
// row code on hs), computed by GradBlocks::dh_out for a whole block of steps when the loop
// enters it, into a block-sized buffer: no dh of all steps; its sums reduce per worker,
// then in worker order, and do not depend on k either.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <climits>
#include <memory>
#include <utility>
#include <vector>


#include "blas.hpp"
#include "head.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "small_gemm.hpp"
#include "tanh.hpp"

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
  const T* x = nullptr;              // (steps, B, D), or null with ids
  // token ids (steps, B) in 0..D-1 instead of x: x_t is their one-hot rows, so the input
  // projection is a gather of W_ih's columns and dW_ih a scatter-add (no dx: null)
  const std::int64_t* ids = nullptr;
  const T* h0 = nullptr;             // (B, H)
  const T* c0 = nullptr;             // (B, H), lstm only
  const std::int64_t* lengths = nullptr;  // (B,) in 1..steps, or null: all have length steps
  const T* rec_mask = nullptr;  // (B, H) or null: recurrent dropout, W_hh (m * h_{t-1})
  Index checkpoint = 0;  // checkpointed BPTT: a segment every k steps (0: save every step)
  int num_threads = 1;
  bool flush_denormals = true;
};

template <class T>
struct ForwardOutput {
  T* hs = nullptr;     // (steps, B, H)
  T* h_n = nullptr;    // (B, H)
  T* c_n = nullptr;    // (B, H), lstm
  // Saved for backward (lstm and gru), both or neither: null for inference, where each
  // worker projects a step's inputs right before the step into scratch of its own.
  T* gates = nullptr;  // (steps, B, G*H): gate activations
  T* extra = nullptr;  // (steps, B, H): lstm cell states, gru W_hn h + b_hn
  // checkpointed (lstm): the cell state before steps 0, k, 2k, ...: (ceil(steps / k), B, H)
  T* checkpoints = nullptr;
};

template <class T>
struct BackwardInput {
  const T* hs = nullptr;
  const T* gates = nullptr;
  const T* extra = nullptr;
  const T* checkpoints = nullptr;  // checkpointed lstm: ForwardOutput::checkpoints
  const T* dhs = nullptr;   // (steps, B, H), or null with a fused head: none
  const T* dh_n = nullptr;  // (B, H)
  const T* dc_n = nullptr;  // (B, H), lstm
  // The fused output head (head.hpp) on hs: its rows are the steps*B states, row t*B + b
  // for step t of sequence b (N = steps*B; h unused: hs). dL/dh_t is then the head's
  // gradient (plus dhs if given), computed block by block of steps inside the backward.
  const HeadProblem<T>* head = nullptr;
};

template <class T>
struct BackwardOutput {
  T* dx = nullptr;     // (steps, B, D), or null: not computed (always null with ids)
  T* dh0 = nullptr;    // (B, H)
  T* dc0 = nullptr;    // (B, H), lstm
  T* dW_ih = nullptr;  // like W_ih
  T* dW_hh = nullptr;
  T* db_ih = nullptr;
  T* db_hh = nullptr;
  T* norms = nullptr;  // (steps, B) or null
  const HeadOutput<T>* head = nullptr;  // with BackwardInput::head: dweight, dbias (dh unused)
  double* head_loss = nullptr;           // with BackwardInput::head: the head's loss
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

// Which sequences of the chunk [b0, b0+nb) are still running at step t.
struct ChunkMask {
  const std::int64_t* lengths;  // already offset to b0, or null
  Index nb;
  Index steps;
  Index all_active_until;  // every sequence of the chunk is active for t < this

  ChunkMask(const std::int64_t* lens, Index b0, Index count, Index steps_)
      : lengths(lens ? lens + b0 : nullptr), nb(count), steps(steps_), all_active_until(steps_) {
    if (lengths)
      for (Index j = 0; j < nb; ++j) all_active_until = std::min<Index>(all_active_until, lengths[j]);
  }
  bool all_active(Index t) const { return t < all_active_until; }
  bool active(Index t, Index j) const { return !lengths || t < lengths[j]; }
  bool last_step(Index t, Index j) const {
    return lengths ? t + 1 == lengths[j] : t + 1 == steps;
  }
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

// Variational recurrent dropout (Gal and Ghahramani 2016) on the chunk [b0, b0 + nb): the
// mask m of each sequence, the same at every step, multiplies the state where it enters the
// recurrent product, W_hh (m * h_{t-1}); everything else reads the unmasked state. Backward
// applies its transpose, dh_{t-1} = m * (W_hh^T dA_t) (+ the direct paths). No mask: the
// state goes in as it is and nothing is copied.
template <class T>
class StateMask {
 public:
  StateMask(const Problem<T>& p, Index b0, Index nb)
      : m_(p.rec_mask ? p.rec_mask + b0 * p.H : nullptr), H_(p.H), nb_(nb) {
    if (m_) buf_.resize(static_cast<std::size_t>(H_ * nb_));
  }
  // forward: what enters W_hh, m * h
  const T* operator()(const T* h) {
    if (!m_) return h;
    ArrMap<T>(buf_.data(), H_, nb_) = ConstArrMap<T>(m_, H_, nb_) * ConstArrMap<T>(h, H_, nb_);
    return buf_.data();
  }
  // backward: W_hh^T dA_t (H x nb, in place) times m
  template <class M>
  void backward(M&& product) const {
    if (m_) product *= ConstArrMap<T>(m_, H_, nb_);
  }

 private:
  const T* m_;
  Index H_, nb_;
  std::vector<T> buf_;
};

template <class T>
void activate(Activation act, T slope, ArrMap<T>& out, const StridedArrMap<T>& rec) {
  switch (act) {
    case Activation::tanh:
      out = fastrnn::tanh(out + rec);
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

// The input projection U x + b of the n columns [c, c + n) of x (D x steps*B) into dst (GH x n,
// column-major). Token ids: U's column of each id plus b, copied from U^T + b made once (the
// bits of the one-hot product: the zero terms add nothing). Else BLAS for large products
// (blas.hpp), or the panel kernel, which streams x once with W_ih
// packed in cache and the bias folded in (1.5x Eigen's GEMM here, which packs all of x
// first): straight into dst with whole packets of rows, else into padded scratch, a block of
// columns at a time, copied out. Each column's bits then do not depend on n (Eigen's GEMM,
// used here before, rounded a column differently for another n: checkpointed BPTT projects
// a step at a time and must match the training forward's projection of all steps).
template <class T>
class InputProjection {
 public:
  InputProjection(const Problem<T>& p, const BlasFunctions& blas)
      : GH_(gates_of(p.cell) * p.H), D_(p.D), W_ih_(p.W_ih), x_(p.x), ids_(p.ids), blas_(blas),
        bias_(Eigen::Map<const Vec>(p.b_ih, GH_)), panels_(GH_ % SimdTraits<T>::size == 0) {
    // rnn, lstm: b_ih + b_hh; gru: b_hr and b_hz join too (b_hn stays inside r * (...))
    bias_.head(p.cell == Cell::gru ? 2 * p.H : GH_) +=
        Eigen::Map<const Vec>(p.b_hh, GH_).head(p.cell == Cell::gru ? 2 * p.H : GH_);
    if (ids_) {
      columns_ = ConstMatMap<T>(p.W_ih, D_, GH_).transpose();
      columns_.colwise() += bias_;
      return;
    }
    packed_.from_row_major(p.W_ih, GH_, D_);
    padded_bias_ = Vec::Zero(packed_.ld);
    padded_bias_.head(GH_) = bias_;
  }
  bool uses_blas(Index n) const {
    if (ids_) return false;
    return fixed_ >= 0 ? fixed_ == 1 : use_blas(blas_, GH_, n, D_);
  }
  // Every later call takes the path a call of n columns takes: a column's bits then do not
  // depend on how many columns a call has (the training forward projects all steps at once,
  // checkpointed BPTT a step at a time; both must give the same bits).
  void fix_path(Index n) { fixed_ = use_blas(blas_, GH_, n, D_) ? 1 : 0; }
  void operator()(Index c, Index n, T* dst) const {
    if (ids_) {
      for (Index j = 0; j < n; ++j)
        std::copy_n(columns_.col(ids_[c + j]).data(), GH_, dst + j * GH_);
      return;
    }
    const T* x = x_ + c * D_;
    if (uses_blas(n)) {
      MatMap<T>(dst, GH_, n).colwise() = bias_;  // then += the product: no zeroing pass
      return gemm(blas_, 'T', 'N', GH_, n, D_, T(1), W_ih_, D_, x, D_, T(1), dst, GH_);
    }
    if (panels_) return small_gemm(packed_, x, D_, dst, GH_, n, bias_.data());
    constexpr Index kColumns = 64;
    std::vector<T> scratch(static_cast<std::size_t>(packed_.ld * std::min(n, kColumns)));
    for (Index j = 0; j < n; j += kColumns) {
      const Index m = std::min(kColumns, n - j);
      small_gemm(packed_, x + j * D_, D_, scratch.data(), packed_.ld, m, padded_bias_.data());
      MatMap<T>(dst + j * GH_, GH_, m) = ConstMatMap<T>(scratch.data(), packed_.ld, m).topRows(GH_);
    }
  }

 private:
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  Index GH_, D_;
  const T* W_ih_;
  const T* x_;
  const std::int64_t* ids_;
  const BlasFunctions& blas_;
  Vec bias_, padded_bias_;
  Mat<T> columns_;  // token ids: U^T + b, (GH x D)
  bool panels_;
  PackedMatrix<T> packed_;
  int fixed_ = -1;
};

// The per-step product of the recurrence, W_hh times the chunk's states (forward: C (GH x
// nb) = W_hh h) or its transpose times the gate gradients (backward: C (H x nb) = W_hh^T dA),
// C with leading dimension ld. The in-house kernel with W_hh packed once per call, or BLAS
// by step_uses_blas (columns and multiply-adds per step and worker): see blas.hpp.
template <class T>
class RecurrentProduct {
 public:
  Index ld = 0;

  RecurrentProduct(const Problem<T>& p, const BlasFunctions& blas, bool transposed, Index nb)
      : blas_(blas), W_hh_(p.W_hh), GH_(gates_of(p.cell) * p.H), H_(p.H),
        transposed_(transposed),
        by_blas_(step_uses_blas(blas, GH_, H_, nb)) {
    ld = padded_rows<T>(transposed ? H_ : GH_);
    if (by_blas_) return;
    if (transposed)
      packed_.from_row_major_transposed(p.W_hh, H_, GH_);
    else
      packed_.from_row_major(p.W_hh, GH_, H_);
  }
  bool uses_blas() const { return by_blas_; }
  void operator()(const T* B, T* C, Index nb) const {
    if (!by_blas_) return small_gemm(packed_, B, transposed_ ? GH_ : H_, C, ld, nb);
    if (transposed_)
      gemm(blas_, 'N', 'N', H_, nb, GH_, T(1), W_hh_, H_, B, GH_, T(0), C, ld);
    else
      gemm(blas_, 'T', 'N', GH_, nb, H_, T(1), W_hh_, H_, B, H_, T(0), C, ld);
  }

 private:
  const BlasFunctions& blas_;
  const T* W_hh_;
  Index GH_, H_;
  bool transposed_, by_blas_;
  PackedMatrix<T> packed_;
};

// Where a forward time loop over the chunk [b0, b0 + nb) finds step t's pre-activations
// U x_t + b (then turned into gate activations in place) and puts its extra values (lstm c_t,
// gru W_hn h + b_hn) and its output h_t: in training, the saved arrays, projected before the
// loop; in inference, scratch of this chunk, the step's inputs projected into it on the spot
// (and, for lstm, two cell-state buffers used in turn); in a checkpointed backward's
// recompute (`segment` steps), a slot per step of the segment for each, h_t included (the
// output hs is not written again). Scratch is placed at the same offset from a 64-byte
// boundary as the saved array's element would be (the bindings align outputs to 64 bytes):
// Eigen computes the unaligned head of a destination without SIMD, whose exp/tanh differ in
// the last bit, so this keeps inference and the recompute bit-for-bit equal to training.
template <class T>
class StepSlots {
 public:
  StepSlots(const Problem<T>& p, const ForwardOutput<T>& out, const InputProjection<T>& proj,
            Index b0, Index nb, Index segment = 0)
      : p_(p), out_(out), proj_(proj), b0_(b0), nb_(nb), GH_(gates_of(p.cell) * p.H),
        segment_(segment) {
    if (segment_ > 0) {
      gates_.resize(static_cast<std::size_t>(segment_ * stride(GH_) + kAlign));
      extra_.resize(static_cast<std::size_t>(segment_ * stride(p.H) + kAlign));
      hs_.resize(static_cast<std::size_t>(segment_ * stride(p.H) + kAlign));
    } else if (!saving()) {
      gates_.resize(static_cast<std::size_t>(GH_ * nb + 2 * kAlign));
      extra_.resize(static_cast<std::size_t>(2 * (p.H * nb + kAlign) + kAlign));
    }
  }
  bool saving() const { return out_.gates != nullptr; }
  // the recompute of the segment that starts at step t0 (its slots are reused)
  void start_segment(Index t0) { t0_ = t0; }
  T* segment_gates(Index t) { return slot(gates_, t, GH_); }  // recompute: no projection
  T* gates(Index t) {
    const Index off = (t * p_.B + b0_) * GH_;
    if (saving()) return out_.gates + off;
    T* g = segment_ > 0 ? slot(gates_, t, GH_) : aligned(gates_.data()) + off % kAlign;
    proj_(t * p_.B + b0_, nb_, g);
    return g;
  }
  T* extra(Index t) {
    const Index off = (t * p_.B + b0_) * p_.H;
    if (saving()) return out_.extra + off;
    if (segment_ > 0) return slot(extra_, t, p_.H);
    return aligned(extra_.data()) + t % 2 * (p_.H * nb_ + kAlign) + off % kAlign;
  }
  T* hs(Index t) {
    if (segment_ > 0) return slot(hs_, t, p_.H);
    return out_.hs + (t * p_.B + b0_) * p_.H;
  }
  // checkpointed forward: keep the cell state before every k-th step
  void checkpoint(Index t, const T* c_prev) const {
    if (!out_.checkpoints || t % p_.checkpoint != 0) return;
    std::copy_n(c_prev, p_.H * nb_, out_.checkpoints + ((t / p_.checkpoint) * p_.B + b0_) * p_.H);
  }
  // the saved values of the next step (written long ago by the projection), or its inputs
  void prefetch_next(Index t) const {
    if (t + 1 >= p_.steps) return;
    if (saving()) return prefetch(out_.gates + ((t + 1) * p_.B + b0_) * GH_, GH_ * nb_);
    if (!p_.ids) prefetch(p_.x + ((t + 1) * p_.B + b0_) * p_.D, p_.D * nb_);
  }

 private:
  static constexpr Index kAlign = Index(64 / sizeof(T));  // elements per 64 bytes
  static T* aligned(T* p) {
    const auto mis = reinterpret_cast<std::uintptr_t>(p) % 64;
    return mis ? p + (64 - mis) / sizeof(T) : p;
  }
  Index stride(Index width) const { return (width * nb_ + kAlign - 1) / kAlign * kAlign + kAlign; }
  T* slot(std::vector<T>& buf, Index t, Index width) {
    const Index off = (t * p_.B + b0_) * width;
    return aligned(buf.data()) + (t - t0_) * stride(width) + off % kAlign;
  }
  const Problem<T>& p_;
  const ForwardOutput<T>& out_;
  const InputProjection<T>& proj_;
  Index b0_, nb_, GH_, segment_, t0_ = 0;
  std::vector<T> gates_, extra_, hs_;
};

// --- forward time loops over the chunk [b0, b0 + nb) ------------------------------------

// The steps [t0, t1) a forward time loop runs (t1 < 0: to the end) and the states before t0
// (null: h0, c0): a segment of a checkpointed backward's recompute.
template <class T>
struct StepSpan {
  Index t0 = 0, t1 = -1;
  const T* h = nullptr;
  const T* c = nullptr;
  Index end(const Problem<T>& p) const { return t1 < 0 ? p.steps : t1; }
};

template <class T>
void rnn_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                       const RecurrentProduct<T>& W, StepSlots<T>&, Index b0, Index nb) {
  const Index H = p.H, B = p.B;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), H, nb, Eigen::OuterStride<>(W.ld));
  const T* h_prev = p.h0 + b0 * H;
  StateMask<T> drop(p, b0, nb);
  for (Index t = 0; t < p.steps; ++t) {
    T* h_ptr = out.hs + (t * B + b0) * H;
    if (t + 1 < p.steps) prefetch(h_ptr + B * H, H * nb);
    W(drop(h_prev), rec_buf.data(), nb);  // W h_{t-1}
    ArrMap<T> h(h_ptr, H, nb);                             // holds U x_t + b
    activate(p.activation, p.slope, h, rec);               // h_t = act(U x_t + W h_{t-1} + b)
    mask.zero_inactive(t, h);
    h_prev = h_ptr;
  }
}

template <class T>
void lstm_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                        const RecurrentProduct<T>& W, StepSlots<T>& slots, Index b0, Index nb,
                        const StepSpan<T>& span = {}) {
  const Index H = p.H, GH = 4 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), GH, nb, Eigen::OuterStride<>(W.ld));
  const T* h_prev = span.h ? span.h : p.h0 + b0 * H;
  const T* c_prev = span.c ? span.c : p.c0 + b0 * H;
  StateMask<T> drop(p, b0, nb);  // a checkpointed recompute applies the forward's mask too
  for (Index t = span.t0; t < span.end(p); ++t) {
    slots.checkpoint(t, c_prev);
    slots.prefetch_next(t);
    W(drop(h_prev), rec_buf.data(), nb);
    ArrMap<T> g(slots.gates(t), GH, nb);  // holds U x_t + b, becomes i, f, g, o
    g.topRows(2 * H) = (g.topRows(2 * H) + rec.topRows(2 * H)).logistic();
    g.middleRows(2 * H, H) = fastrnn::tanh(g.middleRows(2 * H, H) + rec.middleRows(2 * H, H));
    g.bottomRows(H) = (g.bottomRows(H) + rec.bottomRows(H)).logistic();
    ArrMap<T> c(slots.extra(t), H, nb);
    ArrMap<T> h(slots.hs(t), H, nb);
    const ConstArrMap<T> cp(c_prev, H, nb);
    c = g.middleRows(H, H) * cp + g.topRows(H) * g.middleRows(2 * H, H);  // f c + i g
    h = g.bottomRows(H) * fastrnn::tanh(c);                               // o tanh(c)
    mask.zero_inactive(t, h);
    for (Index j = 0; j < nb; ++j)  // the final cell states, after each one's last real step
      if (mask.last_step(t, j)) std::copy_n(c.data() + j * H, H, out.c_n + (b0 + j) * H);
    h_prev = h.data();
    c_prev = c.data();
  }
}

template <class T>
void gru_forward_chunk(const Problem<T>& p, const ForwardOutput<T>& out,
                       const RecurrentProduct<T>& W, StepSlots<T>& slots, Index b0, Index nb,
                       const StepSpan<T>& span = {}) {
  const Index H = p.H, GH = 3 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  std::vector<T> rec_buf(static_cast<std::size_t>(W.ld * nb));
  const StridedArrMap<T> rec(rec_buf.data(), GH, nb, Eigen::OuterStride<>(W.ld));
  const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> b_hn(p.b_hh + 2 * H, H);
  const T* h_prev = span.h ? span.h : p.h0 + b0 * H;
  StateMask<T> drop(p, b0, nb);  // a checkpointed recompute applies the forward's mask too
  for (Index t = span.t0; t < span.end(p); ++t) {
    slots.prefetch_next(t);
    W(drop(h_prev), rec_buf.data(), nb);  // the interpolation below reads h_{t-1} unmasked
    ArrMap<T> g(slots.gates(t), GH, nb);  // W_i. x_t + b_i. (+ b_hr, b_hz), becomes r, z, n
    g.topRows(2 * H) = (g.topRows(2 * H) + rec.topRows(2 * H)).logistic();
    ArrMap<T> hn(slots.extra(t), H, nb);  // W_hn h + b_hn, a column at a time: Eigen's
    for (Index j = 0; j < nb; ++j)        // broadcast of b_hn over columns would not vectorize
      hn.col(j) = rec.col(j).tail(H) + b_hn;
    g.bottomRows(H) = fastrnn::tanh(g.bottomRows(H) + g.topRows(H) * hn);
    ArrMap<T> h(slots.hs(t), H, nb);
    const ConstArrMap<T> hp(h_prev, H, nb);
    h = g.bottomRows(H) + g.middleRows(H, H) * (hp - g.bottomRows(H));  // n + z (h - n)
    mask.zero_inactive(t, h);
    h_prev = h.data();
  }
}

// --- backward time loops -------------------------------------------------------------

// One worker's share of dx and of the weight and bias gradients, computed block by block
// of steps while its dh recurrence runs backwards in time. The time loop writes step t's
// dA (GH x nb) at dA_in(t) (and, for gru, the recurrent side's at dA_rec(t)) and calls
// step_done(t); when t is the first step of its block, the block's products run.
//
// With a helper (a TaskRelay, when there are threads to spare: a chunk of one sequence on
// 2 threads), the block products and the fused head run on the helper thread instead,
// overlapped with the recurrence: the blocks' dA (and the head's dh) alternate between
// two buffers; the head of a block is computed while the recurrence runs the block before
// it, the products of a block while it runs the block after. The tasks run in the order
// one thread runs them (head 0, head 1, block 0, head 2, block 1, ...; blocks counted in
// the order the loop reaches them), so the sums have the same bits.
template <class T>
class GradBlocks {
 public:
  Mat<T> dW_ih, dW_hh;  // (D x GH), (H x GH): the transposes of W_ih's and W_hh's shapes
  Mat<T> dW_ih_cols;    // token ids instead of dW_ih: (GH x D), each step's dA added to its id
  Mat<T> db;            // (GH x 2): db_ih, db_hh

  GradBlocks(const Problem<T>& p, const BackwardInput<T>& in, const BackwardOutput<T>& g,
             const PackedMatrix<T>& W_ih_T, const BlasFunctions& blas, Index b0, Index nb,
             const HeadWeights<T>* head_weights = nullptr, HeadSums<T>* head_sums = nullptr,
             TaskRelay* relay = nullptr)
      : p_(p), in_(in), g_(g), W_ih_T_(W_ih_T), blas_(blas), b0_(b0), nb_(nb),
        GH_(gates_of(p.cell) * p.H), wide_(blas_blocks(p, blas, nb)),
        steps_(block_steps(p, wide_, nb)), blocks_((p.steps + steps_ - 1) / steps_),
        relay_(blocks_ > 1 ? relay : nullptr), slots_(relay_ ? 2 : 1),
        dA_(slots_ * GH_ * nb * steps_),
        dA_rec_(p.cell == Cell::gru ? slots_ * GH_ * nb * steps_ : 0),
        x_(gathered() && !p.ids ? p.D * nb * steps_ : 0), h_prev_(p.H * nb * steps_),
        dx_(g.dx ? W_ih_T.ld * nb * steps_ : 0),
        stream_(worth_streaming(p.steps * p.B * p.D * Index(sizeof(T)))),  // dx
        head_weights_(head_weights), head_sums_(head_sums) {
    if (in.head) {
      head_dh_.resize(slots_ * p.H * nb * steps_);
      if (gathered()) {
        head_h_.resize(head_dh_.size());
        head_y_.resize(static_cast<std::size_t>(nb * steps_));
        if (in.head->row_weights) head_w_.resize(nb * steps_);
      }
    }
    if (p.ids)
      dW_ih_cols.setZero(GH_, p.D);
    else
      dW_ih.setZero(p.D, GH_);
    dW_hh.setZero(p.H, GH_);
    db.setZero(GH_, 2);
    if (relay_)
      plan_tasks();
    else if (relay)  // a single block: nothing to overlap, the helper returns at once
      relay->attach(this, 0, nullptr, nullptr);
  }

  // Whether a chunk of nb sequences puts its block products through BLAS: then its blocks
  // are kBlasColumns wide (BLAS packs both operands every call, which pays off on wide
  // blocks only), else 64 to 256 columns that stay in L2 (the in-house kernels). Token ids
  // leave dW_hh (H rows) as the only product; a float x adds dW_ih and dx (D rows).
  static bool blas_blocks(const Problem<T>& p, const BlasFunctions& blas, Index nb) {
    return use_blas(blas, p.ids ? p.H : std::max(p.D, p.H), gates_of(p.cell) * p.H,
                    std::min(kBlasColumns, p.steps * nb));
  }

  T* dA_in(Index t) { return dA_.data() + column(t) * GH_; }

  // dL/dh_t arriving from step t's output (H x nb): dhs, or with the fused head its
  // gradient of the block of steps that holds t (plus dhs if given), computed when the loop
  // enters the block (t its last step) into a buffer of one block (with a helper: computed
  // ahead, into one of two). The blocks are those of the weight gradients, aligned at
  // t = 0: the same rows in the same order whatever the checkpoint schedule, so the head's
  // sums have the same bits too. The time loops call it first at every step.
  const T* dh_out(Index t) {
    if (t + 1 == p_.steps || (t + 1) % steps_ == 0) enter_block(t - t % steps_, t % steps_ + 1);
    if (!in_.head) return in_.dhs + (t * p_.B + b0_) * p_.H;
    return head_dh_.data() + column(t) * p_.H;
  }
  T* dA_rec(Index t) { return (dA_rec_.empty() ? dA_ : dA_rec_).data() + column(t) * GH_; }

  // The scratch back to this thread's spares (memory.hpp), once the time loop is done: on
  // the worker's own thread, after its last flush.
  void keep_scratch() {
    finish();
    for (Scratch<T>* b : {&dA_, &dA_rec_, &x_, &h_prev_, &dx_, &head_dh_, &head_h_, &head_w_})
      b->keep();
  }

  void step_done(Index t) {
    if (relay_) {
      if (t % steps_ == 0) relay_->publish(order(t) + 1);
      return;
    }
    // the next block's inputs, as far ahead as the block is long
    if (t >= steps_ && !p_.ids) prefetch(p_.x + ((t - steps_) * p_.B + b0_) * p_.D, p_.D * nb_);
    if (t % steps_ == 0) flush(t, std::min(steps_, p_.steps - t));
  }

  // The loop's own thread, once its time loop is done: returns when every block's products
  // have run (with a helper: running what is left).
  void finish() {
    if (relay_ && !tasks_.empty()) relay_->wait_done(static_cast<Index>(tasks_.size()) - 1);
  }

 private:
  static constexpr Index kBlasColumns = 512;

  // Steps per block: in-house, at least 64 columns for the products, at most ~256 KB of dA
  // (L2); with BLAS, kBlasColumns columns, at most ~8 MB of dA; no more than there are.
  static Index block_steps(const Problem<T>& p, bool wide, Index nb) {
    const Index GH = gates_of(p.cell) * p.H;
    const Index cap = (Index(1) << (wide ? 23 : 18)) / (GH * nb * Index(sizeof(T)));
    const Index lo = wide ? kBlasColumns : 64, hi = wide ? kBlasColumns : 256;
    const Index want = std::max<Index>((lo + nb - 1) / nb, std::min<Index>((hi + nb - 1) / nb, cap));
    return std::max<Index>(1, std::min(want, p.steps));
  }
  bool gathered() const { return nb_ != p_.B; }  // else a block of x is contiguous
  // BLAS only in wide blocks: the caller holds BLAS to one thread for those (blas.hpp)
  bool by_blas(Index m, Index n, Index k) const { return wide_ && use_blas(blas_, m, n, k); }

  // C (m x GH) += A (m x n) dA (GH x n)^T: BLAS for large products, the panel kernel where
  // the m rows come in whole packets (no packing of the operands), else Eigen
  void add_outer(Mat<T>& C, const T* A, const T* dA, Index n) const {
    const Index m = C.rows();
    if (by_blas(m, GH_, n))
      return gemm(blas_, 'N', 'T', m, GH_, n, T(1), A, m, dA, GH_, T(1), C.data(), m);
    if (m % SimdTraits<T>::size == 0)
      return panel_gemm<T, true, true>({A, m, dA, GH_, C.data(), m, n, nullptr}, m, GH_);
    C.noalias() += ConstMatMap<T>(A, m, n) * ConstMatMap<T>(dA, GH_, n).transpose();
  }
  // the column of step t in the block buffers: with a helper, blocks alternate between two
  Index column(Index t) const { return (t / steps_ % slots_ * steps_ + t % steps_) * nb_; }
  // the place of the block holding step t in the loop's order (the last block first)
  Index order(Index t) const { return blocks_ - 1 - t / steps_; }
  Index block_start(Index i) const { return (blocks_ - 1 - i) * steps_; }
  Index block_count(Index i) const { return std::min(steps_, p_.steps - block_start(i)); }

  // The loop enters the block [t0, t0 + count): its head's dh must be there, and (with a
  // helper) the products of the block that used the same buffers before it must be done.
  void enter_block(Index t0, Index count) {
    if (!relay_) {
      if (in_.head) head_block(t0, count);
      return;
    }
    const Index i = order(t0);
    if (i >= 2) relay_->wait_done(flush_task_[i - 2]);
    if (in_.head) relay_->wait_done(head_task_[i]);
  }

  // The helper's tasks in the order one thread runs them: head 0, head 1, block 0, head 2,
  // block 1, ... (blocks numbered in the loop's order). A head may run once the block two
  // before it is published (its dh buffer is free), a block's products once it is published.
  struct Task {
    bool head;
    Index block;
  };
  void plan_tasks() {
    const bool head = in_.head != nullptr;
    head_task_.assign(static_cast<std::size_t>(blocks_), -1);
    flush_task_.assign(static_cast<std::size_t>(blocks_), -1);
    const auto add = [&](bool is_head, Index i) {
      (is_head ? head_task_ : flush_task_)[i] = static_cast<Index>(tasks_.size());
      tasks_.push_back({is_head, i});
    };
    if (head) add(true, 0);
    for (Index i = 0; i < blocks_; ++i) {
      if (head && i + 1 < blocks_) add(true, i + 1);
      add(false, i);
    }
    relay_->attach(
        this, static_cast<Index>(tasks_.size()),
        [](const void* self, Index s, Index published) {
          const Task& task = static_cast<const GradBlocks*>(self)->tasks_[s];
          return task.head ? published >= task.block - 1 : published >= task.block + 1;
        },
        [](void* self, Index s) {
          auto* me = static_cast<GradBlocks*>(self);
          const Task& task = me->tasks_[s];
          const Index t0 = me->block_start(task.block), count = me->block_count(task.block);
          if (task.head)
            me->head_block(t0, count);
          else
            me->flush(t0, count);
        });
  }

  // dx of the steps [t0, t0 + count) = W_ih^T dA (D x GH times GH x n): BLAS writes it in
  // place when the chunk is the whole batch (its columns are contiguous in dx), else into
  // scratch; the in-house kernel writes rows padded to whole packets into scratch. Each
  // step's (D x nb) block is then copied out.
  void input_gradient(Index t0, Index count, const T* dA) {
    const Index D = p_.D, B = p_.B, nb = nb_, n = count * nb;
    const bool blas = by_blas(D, n, GH_);
    if (blas && !gathered())
      return gemm(blas_, 'N', 'N', D, n, GH_, T(1), p_.W_ih, D, dA, GH_, T(0),
                  g_.dx + (t0 * B + b0_) * D, D);
    const Index ld = blas ? D : W_ih_T_.ld;
    if (blas)
      gemm(blas_, 'N', 'N', D, n, GH_, T(1), p_.W_ih, D, dA, GH_, T(0), dx_.data(), D);
    else
      small_gemm(W_ih_T_, dA, GH_, dx_.data(), ld, n);
    for (Index s = 0; s < count; ++s) {
      T* dst = g_.dx + ((t0 + s) * B + b0_) * D;
      const T* src = dx_.data() + s * nb * ld;
      if (D != ld) {
        MatMap<T>(dst, D, nb) = ConstMatMap<T>(src, ld, nb).topRows(D);
      } else if (stream_) {
        stream_copy(src, D * nb, dst);
      } else {
        std::copy_n(src, D * nb, dst);
      }
    }
    if (t0 == 0 && stream_) stream_fence();  // the last block
  }

  // The block of steps [t0, t0 + count): its dA are columns [0, count * nb).
  void flush(Index t0, Index count) {
    const Index D = p_.D, H = p_.H, B = p_.B, nb = nb_, n = count * nb;
    // the inputs of these steps, and the states before them, as contiguous columns (in place
    // when the chunk is the whole batch)
    const T* x = p_.ids ? nullptr : p_.x + (t0 * B + b0_) * D;
    if (!p_.ids && gathered()) {
      for (Index s = 0; s < count; ++s)
        std::copy_n(p_.x + ((t0 + s) * B + b0_) * D, D * nb, x_.data() + s * nb * D);
      x = x_.data();
    }
    const T* h_prev = h_prev_.data();
    if (!gathered() && t0 > 0 && !p_.rec_mask) {
      h_prev = in_.hs + ((t0 - 1) * B + b0_) * H;
    } else {  // with recurrent dropout: m * h_{t-1}, what entered W_hh
      for (Index s = 0; s < count; ++s) {
        const Index t = t0 + s;
        const T* src = t > 0 ? in_.hs + ((t - 1) * B + b0_) * H : p_.h0 + b0_ * H;
        std::copy_n(src, H * nb, h_prev_.data() + s * nb * H);
        if (p_.rec_mask)
          ArrMap<T>(h_prev_.data() + s * nb * H, H, nb) *=
              ConstArrMap<T>(p_.rec_mask + b0_ * H, H, nb);
      }
    }
    const T* dA = dA_in(t0);
    const T* dAr = dA_rec(t0);
    if (!p_.ids) {
      add_outer(dW_ih, x, dA, n);  // dW_ih += X dA^T
    } else {                       // one-hot X: each column of dA adds to its id's column
      for (Index s = 0; s < count; ++s)
        for (Index j = 0; j < nb; ++j)
          dW_ih_cols.col(p_.ids[(t0 + s) * B + b0_ + j]) +=
              ConstMatMap<T>(dA + (s * nb + j) * GH_, GH_, 1);
    }
    add_outer(dW_hh, h_prev, dAr, n);  // dW_hh += H_prev dA_rec^T
    db.col(0) += ConstMatMap<T>(dA, GH_, n).rowwise().sum();
    if (!dA_rec_.empty()) db.col(1) += ConstMatMap<T>(dAr, GH_, n).rowwise().sum();
    if (g_.dx) input_gradient(t0, count, dA);
  }

  // The head on the rows of the steps [t0, t0 + count) of this chunk (gathered into
  // contiguous rows unless the chunk is the whole batch): their dL/dh into head_dh_, the
  // sums into head_sums_.
  void head_block(Index t0, Index count) {
    const HeadProblem<T>& head = *in_.head;
    const Index H = p_.H, B = p_.B, nb = nb_, first = t0 * B + b0_;
    HeadProblem<T> rows = head;
    rows.N = count * nb;
    rows.h = in_.hs + first * H;
    rows.targets = head.targets + first;
    rows.row_weights = head.row_weights ? head.row_weights + first : nullptr;
    if (gathered()) {
      for (Index s = 0; s < count; ++s) {
        const Index r = (t0 + s) * B + b0_;
        std::copy_n(in_.hs + r * H, H * nb, head_h_.data() + s * nb * H);
        std::copy_n(head.targets + r, nb, head_y_.data() + s * nb);
        if (head.row_weights) std::copy_n(head.row_weights + r, nb, head_w_.data() + s * nb);
      }
      rows.h = head_h_.data();
      rows.targets = head_y_.data();
      if (head.row_weights) rows.row_weights = head_w_.data();
    }
    HeadOutput<T> out;
    out.dh = head_dh_.data() + column(t0) * H;
    head_sums_->rows(rows, out, *head_weights_, 0, rows.N);
    if (!in_.dhs) return;
    for (Index s = 0; s < count; ++s)
      ArrMap<T>(out.dh + s * nb * H, H, nb) +=
          ConstArrMap<T>(in_.dhs + ((t0 + s) * B + b0_) * H, H, nb);
  }

  const Problem<T>& p_;
  const BackwardInput<T>& in_;
  const BackwardOutput<T>& g_;
  const PackedMatrix<T>& W_ih_T_;
  const BlasFunctions& blas_;
  Index b0_, nb_, GH_;
  bool wide_;
  Index steps_, blocks_;
  TaskRelay* relay_;  // the helper's, or null: the loop's thread runs the blocks
  Index slots_;       // buffers the blocks alternate between
  std::vector<Task> tasks_;
  std::vector<Index> head_task_, flush_task_;  // the task of each block's head, products
  Scratch<T> dA_, dA_rec_, x_, h_prev_, dx_;  // kept by the worker's thread (keep_scratch)
  bool stream_;
  const HeadWeights<T>* head_weights_;
  HeadSums<T>* head_sums_;
  Scratch<T> head_dh_, head_h_, head_w_;
  std::vector<std::int64_t> head_y_;
};


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

// What a backward time loop over the chunk [b0, b0 + nb) reads of the forward's saved
// values (lstm, gru): the saved arrays (full BPTT) or, checkpointed, the slots of the segment
// that holds step t, which enter(t) recomputes when the loop reaches the segment's last step,
// with the forward's own time loop (the same products, the same bits) into slots reused by
// every segment.
template <class T>
class SavedSteps {
 public:
  SavedSteps(const Problem<T>& p, const BackwardInput<T>& in, const InputProjection<T>* proj,
             const RecurrentProduct<T>* W, Index b0, Index nb)
      : p_(p), in_(in), W_(W), b0_(b0), nb_(nb), GH_(gates_of(p.cell) * p.H),
        k_(p.cell == Cell::rnn ? 0 : p.checkpoint) {
    if (k_ <= 0) return;
    c_n_.resize(static_cast<std::size_t>(p.B * p.H));  // the forward loop's c_n, unused
    out_.c_n = c_n_.data();
    slots_ = std::make_unique<StepSlots<T>>(p, out_, *proj, b0, nb, std::min(k_, p.steps));
  }
  // Called first thing at step t: recomputes t's segment [s0, t + 1) when t is its last step.
  void enter(Index t) {
    if (k_ <= 0 || (t + 1 < p_.steps && (t + 1) % k_ != 0)) return;
    const Index s0 = t / k_ * k_, H = p_.H;
    slots_->start_segment(s0);
    StepSpan<T> span;
    span.t0 = s0;
    span.t1 = t + 1;
    span.h = s0 > 0 ? in_.hs + ((s0 - 1) * p_.B + b0_) * H : nullptr;
    span.c = p_.cell == Cell::lstm ? checkpoint(s0) : nullptr;
    if (p_.cell == Cell::lstm) lstm_forward_chunk(p_, out_, *W_, *slots_, b0_, nb_, span);
    if (p_.cell == Cell::gru) gru_forward_chunk(p_, out_, *W_, *slots_, b0_, nb_, span);
    s0_ = s0;
  }
  const T* gates(Index t) const {
    return k_ > 0 ? slots_->segment_gates(t) : in_.gates + (t * p_.B + b0_) * GH_;
  }
  const T* extra(Index t) const {
    return k_ > 0 ? slots_->extra(t) : in_.extra + (t * p_.B + b0_) * p_.H;
  }
  // lstm: the cell state before step t
  const T* c_prev(Index t) const {
    if (k_ > 0) return t > s0_ ? slots_->extra(t - 1) : checkpoint(t);
    return t > 0 ? extra(t - 1) : p_.c0 + b0_ * p_.H;
  }
  // the saved values of step t, read next (full BPTT; a recomputed segment is in cache)
  void prefetch_step(Index t) const {
    if (k_ > 0 || t < 0) return;
    prefetch(gates(t), GH_ * nb_);
    prefetch(extra(t), p_.H * nb_);
  }

 private:
  const T* checkpoint(Index t) const { return in_.checkpoints + (t / k_ * p_.B + b0_) * p_.H; }
  const Problem<T>& p_;
  const BackwardInput<T>& in_;
  const RecurrentProduct<T>* W_;
  Index b0_, nb_, GH_, k_, s0_ = 0;
  ForwardOutput<T> out_;
  std::vector<T> c_n_;
  std::unique_ptr<StepSlots<T>> slots_;
};

template <class T>
void rnn_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                        const BackwardOutput<T>& g, const RecurrentProduct<T>& WT, GradBlocks<T>& grads,
                        Index b0, Index nb) {
  const Index H = p.H, B = p.B;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  const StateMask<T> drop(p, b0, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  ArrMap<T> dht(s.dht.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    if (t > 0) {
      if (in.dhs) prefetch(in.dhs + (off - B) * H, H * nb);
      prefetch(in.hs + (off - B) * H, H * nb);
    }
    const ConstArrMap<T> dhs_t(grads.dh_out(t), H, nb), h(in.hs + off * H, H, nb);
    ArrMap<T> dA(grads.dA_in(t), H, nb);
    if (g.norms || !mask.all_active(t)) {
      dht = s.dh_map() + dhs_t;  // dL/dh_t
      mask.zero_inactive(t, dht);
      store_norms(g, t, B, b0, dht);
      activation_grad(p.activation, p.slope, dA, dht, h);
    } else {  // the same in one pass
      activation_grad(p.activation, p.slope, dA, s.dh_map() + dhs_t, h);
    }
    WT(dA.data(), s.rec, nb);  // dL/dh_{t-1} = W^T dA_t
    drop.backward(s.rec_map());
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
    grads.step_done(t);
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
}

template <class T>
void lstm_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                         const BackwardOutput<T>& g, const RecurrentProduct<T>& WT,
                         GradBlocks<T>& grads, SavedSteps<T>& saved, Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 4 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  const StateMask<T> drop(p, b0, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  std::vector<T> dc_buf(in.dc_n + b0 * H, in.dc_n + (b0 + nb) * H);
  s.extra1.resize(H * nb);
  s.extra2.resize(H * nb);
  ArrMap<T> dc(dc_buf.data(), H, nb), dht(s.dht.data(), H, nb);
  ArrMap<T> tc(s.extra1.data(), H, nb), dct(s.extra2.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    saved.enter(t);
    const ConstArrMap<T> gt(saved.gates(t), GH, nb);
    const auto i = gt.topRows(H), f = gt.middleRows(H, H), gg = gt.middleRows(2 * H, H),
               o = gt.bottomRows(H);
    if (t > 0) {
      if (in.dhs) prefetch(in.dhs + (off - B) * H, H * nb);
      saved.prefetch_step(t - 1);
    }
    const ConstArrMap<T> c(saved.extra(t), H, nb);
    const ConstArrMap<T> c_prev(saved.c_prev(t), H, nb);
    dht = s.dh_map() + ConstArrMap<T>(grads.dh_out(t), H, nb);  // dL/dh_t
    mask.zero_inactive(t, dht);
    store_norms(g, t, B, b0, dht);
    tc = fastrnn::tanh(c);
    ArrMap<T> dA(grads.dA_in(t), GH, nb);
    dA.bottomRows(H) = dht * tc * o * (T(1) - o);           // do, through sigmoid
    dct = dc + dht * o * (T(1) - tc * tc);                  // dL/dc_t
    mask.zero_inactive(t, dct);
    dA.topRows(H) = dct * gg * i * (T(1) - i);              // di
    dA.middleRows(H, H) = dct * c_prev * f * (T(1) - f);    // df
    dA.middleRows(2 * H, H) = dct * i * (T(1) - gg * gg);  // dg, through tanh
    WT(dA.data(), s.rec, nb);       // dL/dh_{t-1} = W_hh^T dA_t
    drop.backward(s.rec_map());
    if (mask.all_active(t)) {
      dc = dct * f;  // dL/dc_{t-1}
    } else {
      for (Index j = 0; j < nb; ++j)
        if (mask.active(t, j)) dc.col(j) = dct.col(j) * f.col(j);
    }
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
    grads.step_done(t);
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
  ArrMap<T>(g.dc0 + b0 * H, H, nb) = dc;
}

template <class T>
void gru_backward_chunk(const Problem<T>& p, const BackwardInput<T>& in,
                        const BackwardOutput<T>& g, const RecurrentProduct<T>& WT, GradBlocks<T>& grads,
                        SavedSteps<T>& saved, Index b0, Index nb) {
  const Index H = p.H, B = p.B, GH = 3 * H;
  const ChunkMask mask(p.lengths, b0, nb, p.steps);
  ChunkScratch<T> s(WT.ld, H, nb);
  const StateMask<T> drop(p, b0, nb);
  s.dh_map() = ConstArrMap<T>(in.dh_n + b0 * H, H, nb);
  ArrMap<T> dht(s.dht.data(), H, nb);
  for (Index t = p.steps - 1; t >= 0; --t) {
    const Index off = t * B + b0;
    saved.enter(t);
    const ConstArrMap<T> gt(saved.gates(t), GH, nb);
    const auto r = gt.topRows(H), z = gt.middleRows(H, H), n = gt.bottomRows(H);
    if (t > 0) {
      if (in.dhs) prefetch(in.dhs + (off - B) * H, H * nb);
      saved.prefetch_step(t - 1);
      if (t > 1) prefetch(in.hs + (off - 2 * B) * H, H * nb);
    }
    const ConstArrMap<T> hn(saved.extra(t), H, nb);
    const ConstArrMap<T> h_prev(t > 0 ? in.hs + (off - B) * H : p.h0 + b0 * H, H, nb);
    dht = s.dh_map() + ConstArrMap<T>(grads.dh_out(t), H, nb);  // dL/dh_t
    mask.zero_inactive(t, dht);
    store_norms(g, t, B, b0, dht);
    ArrMap<T> dA_in(grads.dA_in(t), GH, nb), dA_rec(grads.dA_rec(t), GH, nb);
    dA_in.bottomRows(H) = dht * (T(1) - z) * (T(1) - n * n);              // dn, through tanh
    dA_in.middleRows(H, H) = dht * (h_prev - n) * z * (T(1) - z);         // dz
    dA_in.topRows(H) = dA_in.bottomRows(H) * hn * r * (T(1) - r);         // dr
    dA_rec.topRows(2 * H) = dA_in.topRows(2 * H);                         // r, z: both sides
    dA_rec.bottomRows(H) = dA_in.bottomRows(H) * r;                       // n: gated by r
    WT(dA_rec.data(), s.rec, nb);
    drop.backward(s.rec_map());
    s.rec_map() += dht * z;  // dL/dh_{t-1} = W_hh^T dA_rec + dh z
    mask.carry_inactive(t, s.rec_map(), s.dh_map());
    s.swap();
    grads.step_done(t);
  }
  ArrMap<T>(g.dh0 + b0 * H, H, nb) = s.dh_map();
}

template <class T>
int workers_for(const Problem<T>& p, Index items) {
  return static_cast<int>(std::max<Index>(1, std::min<Index>(p.num_threads, items)));
}

// The columns of the widest input projection of a training forward (all steps split over
// the workers): the product path of every projection of a training or checkpointed call.
template <class T>
Index projection_columns(const Problem<T>& p) {
  const Index TB = p.steps * p.B;
  const int workers = workers_for(p, TB);
  return (TB + workers - 1) / workers;
}

}  // namespace detail

// --- entry points ----------------------------------------------------------------------

template <class T>
void forward(const Problem<T>& p, const ForwardOutput<T>& out) {
  using namespace detail;
  const Index H = p.H, B = p.B, GH = gates_of(p.cell) * H, TB = p.steps * B;
  const BlasFunctions blas = current_blas();
  InputProjection<T> project(p, blas);
  // rnn always projects into hs; lstm and gru into the saved gates, in training only
  T* pre = p.cell == Cell::rnn ? out.hs : out.gates;  // (GH, TB): U x_t + b for every step
  if (pre || p.checkpoint > 0) project.fix_path(projection_columns(p));
  const int proj_workers = workers_for(p, TB), workers = workers_for(p, B);
  // the widest product: the projection of a worker's rows, or (inference) of a step's chunk
  const Index widest = pre ? (TB + proj_workers - 1) / proj_workers : (B + workers - 1) / workers;
  const RecurrentProduct<T> W(p, blas, false, (B + workers - 1) / workers);
  const BlasSingleThreaded blas_threads(blas, project.uses_blas(widest) || W.uses_blas());
  if (pre) {
    run_workers(proj_workers, p.flush_denormals, [&](int w) {
      const auto [c0, c1] = split_range(TB, proj_workers, w);
      project(c0, c1 - c0, pre + c0 * GH);
    });
  }
  run_workers(workers, p.flush_denormals, [&](int w) {
    const auto [b0, b1] = split_range(B, workers, w);
    StepSlots<T> slots(p, out, project, b0, b1 - b0);
    if (p.cell == Cell::rnn) rnn_forward_chunk(p, out, W, slots, b0, b1 - b0);
    if (p.cell == Cell::lstm) lstm_forward_chunk(p, out, W, slots, b0, b1 - b0);
    if (p.cell == Cell::gru) gru_forward_chunk(p, out, W, slots, b0, b1 - b0);
  });
  // final states: after each sequence's last real step (lstm's cell states: in the loop)
  for (Index b = 0; b < B; ++b) {
    const Index last = p.lengths ? static_cast<Index>(p.lengths[b]) - 1 : p.steps - 1;
    std::copy_n(out.hs + (last * B + b) * H, H, out.h_n + b * H);
  }
}

template <class T>
void backward(const Problem<T>& p, const BackwardInput<T>& in, const BackwardOutput<T>& g) {
  using namespace detail;
  const Index H = p.H, B = p.B, D = p.D, GH = gates_of(p.cell) * H;
  const int workers = workers_for(p, B);
  const Index widest = (B + workers - 1) / workers;
  const BlasFunctions blas = current_blas();
  const RecurrentProduct<T> WT(p, blas, true, widest);  // W_hh^T (H x GH)
  PackedMatrix<T> W_ih_T;  // W_ih^T (D x GH), for dx
  if (g.dx) W_ih_T.from_row_major_transposed(p.W_ih, D, GH);
  // checkpointed: the forward's projection and per-step product, for the recompute
  const bool recompute = p.checkpoint > 0 && p.cell != Cell::rnn;
  std::unique_ptr<InputProjection<T>> project;
  std::unique_ptr<RecurrentProduct<T>> W;
  if (recompute) {
    project = std::make_unique<InputProjection<T>>(p, blas);
    project->fix_path(projection_columns(p));
    W = std::make_unique<RecurrentProduct<T>>(p, blas, false, widest);
  }
  const BlasSingleThreaded blas_threads(
      blas, GradBlocks<T>::blas_blocks(p, blas, widest) || WT.uses_blas() ||
                (recompute && (project->uses_blas(widest) || W->uses_blas())) ||
                (in.head && blas_takes_all(blas)));
  // the fused head: its weights packed once; each worker's sums, added in worker order
  std::unique_ptr<HeadWeights<T>> head_weights;
  std::vector<HeadSums<T>> head_sums;
  if (in.head) {
    head_weights = std::make_unique<HeadWeights<T>>(*in.head, blas);
    head_sums.assign(static_cast<std::size_t>(workers), HeadSums<T>(*in.head));
  }
  std::vector<std::unique_ptr<GradBlocks<T>>> parts(workers);
  // threads to spare (at least one per chunk): a helper per chunk runs its block products
  std::vector<TaskRelay> relays(p.num_threads >= 2 * workers ? workers : 0);
  const int helpers = static_cast<int>(relays.size());
  run_workers(workers + helpers, p.flush_denormals, [&](int w) {
    if (w >= workers) return relays[w - workers].help();
    TaskRelay* relay = helpers ? &relays[w] : nullptr;
    try {
      const auto [b0, b1] = split_range(B, workers, w);
      parts[w] = std::make_unique<GradBlocks<T>>(p, in, g, W_ih_T, blas, b0, b1 - b0,
                                                 head_weights.get(),
                                                 in.head ? &head_sums[w] : nullptr, relay);
      SavedSteps<T> saved(p, in, project.get(), W.get(), b0, b1 - b0);
      if (p.cell == Cell::rnn) rnn_backward_chunk(p, in, g, WT, *parts[w], b0, b1 - b0);
      if (p.cell == Cell::lstm) lstm_backward_chunk(p, in, g, WT, *parts[w], saved, b0, b1 - b0);
      if (p.cell == Cell::gru) gru_backward_chunk(p, in, g, WT, *parts[w], saved, b0, b1 - b0);
      parts[w]->keep_scratch();
    } catch (...) {
      if (relay) relay->fail();
      throw;
    }
  });
  MatMap<T> dW_ih(g.dW_ih, D, GH), dW_hh(g.dW_hh, H, GH);
  Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> db_ih(g.db_ih, GH), db_hh(g.db_hh, GH);
  const int rec = p.cell == Cell::gru ? 1 : 0;  // rnn, lstm: db_hh is db_ih
  if (p.ids)
    dW_ih = parts[0]->dW_ih_cols.transpose();
  else
    dW_ih = parts[0]->dW_ih;
  dW_hh = parts[0]->dW_hh;
  db_ih = parts[0]->db.col(0);
  db_hh = parts[0]->db.col(rec);
  for (int w = 1; w < workers; ++w) {
    if (p.ids)
      dW_ih += parts[w]->dW_ih_cols.transpose();
    else
      dW_ih += parts[w]->dW_ih;
    dW_hh += parts[w]->dW_hh;
    db_ih += parts[w]->db.col(0);
    db_hh += parts[w]->db.col(rec);
  }
  if (in.head) *g.head_loss = HeadSums<T>::reduce(head_sums, *g.head, H, in.head->K);
}

}  // namespace fastrnn
