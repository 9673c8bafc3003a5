// Bindings of the recurrent kernels (fastrnn/recurrent.hpp, head.hpp), compiled once, into
// fastrnn._core (baseline x86-64). The kernels themselves are compiled once per
// instruction-set level into the modules _kernels_generic, _kernels_avx2, _kernels_avx512
// (kernel_module.cpp; see CMakeLists.txt); each such module, when imported, calls
// _core._bind_kernels(module), which adds the functions below to it, bound to that module's
// KernelTable (fastrnn/kernel_table.hpp). Every buffer is checked here (dtype, C order,
// shape, lengths in range) with the GIL held; then the GIL is released around the kernel,
// called through the table.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastrnn/head.hpp"
#include "fastrnn/kernel_table.hpp"
#include "fastrnn/output_cache.hpp"
#include "fastrnn/recurrent.hpp"

namespace py = pybind11;
using fastrnn::Index;

namespace {

std::string shape_str(const std::vector<Index>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) s += ", ";
  }
  if (shape.size() == 1) s.pop_back(), s.pop_back(), s += ",";
  return s + ")";
}

std::string array_shape(const py::array& a) {
  std::vector<Index> shape(a.shape(), a.shape() + a.ndim());
  return shape_str(shape);
}

fastrnn::Cell parse_cell(const std::string& name) {
  if (name == "rnn") return fastrnn::Cell::rnn;
  if (name == "lstm") return fastrnn::Cell::lstm;
  if (name == "gru") return fastrnn::Cell::gru;
  throw py::value_error("cell must be one of 'rnn', 'lstm', 'gru', got '" + name + "'");
}

fastrnn::Activation parse_activation(const std::string& name) {
  if (name == "tanh") return fastrnn::Activation::tanh;
  if (name == "relu") return fastrnn::Activation::relu;
  if (name == "leaky_relu") return fastrnn::Activation::leaky_relu;
  if (name == "identity") return fastrnn::Activation::identity;
  throw py::value_error(
      "activation must be one of 'tanh', 'relu', 'leaky_relu', 'identity', got '" + name + "'");
}

py::array as_array(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

// dtypes compare by value: an array that went through pickle carries an equal dtype that
// is another object. An equal dtype is also in native byte order.
template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().equal(py::dtype::of<T>());
}

// What is wrong with a's dtype, for a message: its name, and the byte order if that is
// what differs.
std::string dtype_str(const py::array& a) {
  const std::string order = py::str(a.dtype().attr("byteorder"));
  std::string s = py::str(a.dtype());
  if (order == "<" || order == ">")  // numpy writes '=' for native, '|' for not applicable
    s += " (non-native byte order '" + order + "'; convert with " +
         "a.astype(a.dtype.newbyteorder('=')))";
  return s;
}

// Checks that a has exactly the expected shape and is C-contiguous.
void check_layout(const py::array& a, const char* name, const std::vector<Index>& shape) {
  std::vector<Index> got(a.shape(), a.shape() + a.ndim());
  if (got != shape)
    throw py::value_error(std::string(name) + " has shape " + shape_str(got) + ", expected " +
                          shape_str(shape));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
}

// Checks one buffer: a C-contiguous array of scalar T with exactly the expected shape.
template <class T>
const T* input(const py::object& obj, const char* name, const std::vector<Index>& shape,
               const char* dtype_from = "x") {
  py::array a = as_array(obj, name);
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " has dtype " + dtype_str(a) + ", expected " +
                         std::string(py::str(py::dtype::of<T>())) + " (the dtype of " +
                         dtype_from + ")");
  check_layout(a, name, shape);
  return static_cast<const T*>(a.data());
}

template <class T>
const T* optional_input(const py::object& obj, const char* name, const std::vector<Index>& shape,
                        bool wanted, const std::string& cell) {
  if (!wanted) {
    if (!obj.is_none())
      throw py::value_error(std::string(name) + " must be None for cell '" + cell + "'");
    return nullptr;
  }
  if (obj.is_none())
    throw py::value_error(std::string(name) + " is required for cell '" + cell + "', expected " +
                          "an array of shape " + shape_str(shape));
  return input<T>(obj, name, shape);
}

// The thread settings every kernel problem (Problem, HeadProblem) carries.
template <class Problem>
void set_threads(Problem& p, int num_threads, bool flush_denormals) {
  if (num_threads < 1)
    throw py::value_error("num_threads must be >= 1, got " + std::to_string(num_threads));
  p.num_threads = num_threads;
  p.flush_denormals = flush_denormals;
}

// A C-contiguous int64 array of the given shape with every value in lo..hi; `range` names
// the range in the message.
const std::int64_t* int64_input(const py::object& obj, const char* name,
                                const std::vector<Index>& shape, std::int64_t lo, std::int64_t hi,
                                const std::string& range) {
  py::array a = as_array(obj, name);
  if (!has_dtype<std::int64_t>(a))
    throw py::type_error(std::string(name) + " has dtype " + dtype_str(a) + ", expected int64");
  check_layout(a, name, shape);
  const auto* v = static_cast<const std::int64_t*>(a.data());
  const Index n = static_cast<Index>(a.size());
  for (Index i = 0; i < n; ++i)
    if (v[i] < lo || v[i] > hi)
      throw py::value_error(std::string(name) + " must be in " + range + ", got " +
                            std::to_string(v[i]) + " at index " + std::to_string(i));
  return v;
}

const std::int64_t* lengths_input(const py::object& obj, Index steps, Index B) {
  if (obj.is_none()) return nullptr;
  return int64_input(obj, "lengths", {B}, 1, steps, "1..T = 1.." + std::to_string(steps));
}

// The recurrent dropout mask (B, H), or None for none.
template <class T>
const T* recurrent_mask_input(const py::object& obj, Index B, Index H) {
  if (obj.is_none()) return nullptr;
  return input<T>(obj, "recurrent_mask", {B, H});
}

// Whether x is token ids: an int64 array (the kernels' one-hot input).
bool token_ids(const py::object& x) {
  return py::isinstance<py::array>(x) &&
         has_dtype<std::int64_t>(py::reinterpret_borrow<py::array>(x));
}

// The sizes of a problem, read from x (T, B, D) (token ids: (T, B), D from W_ih) and W_hh
// (G*H, H).
template <class T>
fastrnn::Problem<T> problem(const std::string& cell_name, const std::string& activation,
                            double slope, const py::object& W_ih, const py::object& W_hh,
                            const py::object& x, const py::object& h0, const py::object& c0,
                            const py::object& lengths, int num_threads, bool flush_denormals) {
  fastrnn::Problem<T> p;
  p.cell = parse_cell(cell_name);
  p.activation = parse_activation(activation);
  if (p.cell != fastrnn::Cell::rnn && p.activation != fastrnn::Activation::tanh)
    throw py::value_error("activation applies to cell 'rnn' only");
  if (!std::isfinite(slope) || slope < 0.0)
    throw py::value_error("negative_slope must be finite and >= 0, got " + std::to_string(slope));
  p.slope = static_cast<T>(slope);
  set_threads(p, num_threads, flush_denormals);
  const Index G = fastrnn::gates_of(p.cell);
  py::array xa = as_array(x, "x");
  const bool ids = token_ids(x);
  if (xa.ndim() != (ids ? 2 : 3))
    throw py::value_error("x has shape " + array_shape(xa) +
                          (ids ? ", expected (T, B) token ids" : ", expected (T, B, D)"));
  p.steps = xa.shape(0);
  p.B = xa.shape(1);
  if (ids) {
    py::array ia = as_array(W_ih, "W_ih");
    if (ia.ndim() != 2 || ia.shape(1) < 1)
      throw py::value_error("W_ih has shape " + array_shape(ia) + ", expected (G*H, D), D >= 1");
    p.D = ia.shape(1);
  } else {
    p.D = xa.shape(2);
  }
  if (p.steps < 1 || p.B < 1)
    throw py::value_error("x has shape " + array_shape(xa) + ", expected T >= 1 and B >= 1");
  py::array wa = as_array(W_hh, "W_hh");
  if (wa.ndim() != 2 || wa.shape(1) < 1 || wa.shape(0) != G * wa.shape(1))
    throw py::value_error("W_hh has shape " + array_shape(wa) + ", expected (" +
                          std::to_string(G) + "*H, H) for cell '" + cell_name + "'");
  p.H = wa.shape(1);
  const Index GH = G * p.H;
  if (ids)
    p.ids = int64_input(x, "x", {p.steps, p.B}, 0, p.D - 1,
                        "0..D-1 = 0.." + std::to_string(p.D - 1) + " (token ids, D from W_ih)");
  else
    p.x = input<T>(x, "x", {p.steps, p.B, p.D});
  p.W_hh = input<T>(W_hh, "W_hh", {GH, p.H});
  p.W_ih = input<T>(W_ih, "W_ih", {GH, p.D});
  p.h0 = input<T>(h0, "h0", {p.B, p.H});
  p.c0 = optional_input<T>(c0, "c0", {p.B, p.H}, p.cell == fastrnn::Cell::lstm, cell_name);
  p.lengths = lengths_input(lengths, p.steps, p.B);
  return p;
}

// Checkpointed BPTT's k: 0 (save every step) or k >= 1 for a training call. rnn saves
// nothing either way, so k is accepted and changes nothing there.
Index checkpoint_input(Index k, bool training, fastrnn::Cell cell) {
  if (k < 0) throw py::value_error("checkpoint must be >= 0, got " + std::to_string(k));
  if (k > 0 && !training)
    throw py::value_error("checkpoint applies to a training forward, got training=False");
  return cell == fastrnn::Cell::rnn ? 0 : k;
}

// The segments of checkpointed BPTT: ceil(steps / k).
template <class T>
Index segments(const fastrnn::Problem<T>& p) {
  return (p.steps + p.checkpoint - 1) / p.checkpoint;
}

// The name of the capsules that own the outputs' memory (the arrays' base).
constexpr const char* kOutputBlock = "fastrnn.output_block";

// Gives an output's block back to the cache (output_cache.hpp) when NumPy frees the array:
// the capsule holds the block, its context the bytes asked for.
void release_output(PyObject* capsule) {
  void* block = PyCapsule_GetPointer(capsule, kOutputBlock);
  const auto bytes = reinterpret_cast<std::uintptr_t>(PyCapsule_GetContext(capsule));
  if (block) fastrnn::OutputCache::instance().release(block, static_cast<std::size_t>(bytes));
}

// A new output array. Its memory comes from the process's OutputCache, which keeps large
// blocks between calls (a training step's outputs skip the page faults and the kernel's
// zeroing of fresh memory), and starts on a 64-byte boundary: Eigen peels the unaligned head
// of a destination with scalar code, whose exp/tanh differ from the SIMD ones in the last
// bit, so outputs placed wherever the allocator likes made results differ between two calls
// on the same input; aligned outputs make every call bit-for-bit reproducible.
template <class T>
py::array_t<T> empty(const std::vector<Index>& shape) {
  std::size_t n = 1;
  for (Index s : shape) n *= static_cast<std::size_t>(s);
  const std::size_t bytes = n * sizeof(T);
  auto& cache = fastrnn::OutputCache::instance();
  void* block = cache.acquire(bytes);
  PyObject* capsule = PyCapsule_New(block, kOutputBlock, release_output);
  if (!capsule || PyCapsule_SetContext(capsule, reinterpret_cast<void*>(bytes)) != 0) {
    if (capsule)
      Py_DECREF(capsule);  // its destructor gives the block back
    else
      cache.release(block, bytes);
    throw py::error_already_set();
  }
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()),
                        static_cast<T*>(block), py::reinterpret_steal<py::capsule>(capsule));
}

// set_blas's kernel_isa names, by BlasFunctions::level (blas.hpp).
constexpr const char* kBlasWidths[] = {"generic", "avx2", "avx512"};

// Raises what a kernel entry point caught, as pybind11 does for the C++ exception:
// MemoryError for std::bad_alloc, RuntimeError with its message for any other.
void check(const fastrnn::KernelStatus& status) {
  if (status.code == fastrnn::KernelStatus::bad_alloc) throw std::bad_alloc();
  if (status.code != fastrnn::KernelStatus::ok) throw std::runtime_error(status.message);
}

template <class T>
py::tuple forward_impl(const fastrnn::KernelTable& k, const std::string& cell,
                       const std::string& activation, double slope, const py::object& W_ih,
                       const py::object& W_hh, const py::object& b_ih, const py::object& b_hh,
                       const py::object& x, const py::object& h0, const py::object& c0,
                       const py::object& lengths, int num_threads, bool flush_denormals,
                       bool training, const py::object& recurrent_mask, Index checkpoint) {
  auto p = problem<T>(cell, activation, slope, W_ih, W_hh, x, h0, c0, lengths, num_threads,
                      flush_denormals);
  p.rec_mask = recurrent_mask_input<T>(recurrent_mask, p.B, p.H);
  const Index GH = fastrnn::gates_of(p.cell) * p.H;
  p.b_ih = input<T>(b_ih, "b_ih", {GH});
  p.b_hh = input<T>(b_hh, "b_hh", {GH});
  p.checkpoint = checkpoint_input(checkpoint, training, p.cell);
  const bool saves = training && p.cell != fastrnn::Cell::rnn && p.checkpoint == 0;
  auto hs = empty<T>({p.steps, p.B, p.H});
  auto h_n = empty<T>({p.B, p.H});
  py::object c_n = py::none(), gates = py::none(), extra = py::none();
  fastrnn::ForwardOutput<T> out;
  out.hs = hs.mutable_data();
  out.h_n = h_n.mutable_data();
  if (p.cell == fastrnn::Cell::lstm) {
    auto a = empty<T>({p.B, p.H});
    out.c_n = a.mutable_data();
    c_n = a;
  }
  if (saves) {
    auto g = empty<T>({p.steps, p.B, GH});
    auto e = empty<T>({p.steps, p.B, p.H});
    out.gates = g.mutable_data();
    out.extra = e.mutable_data();
    gates = g;
    extra = e;
  } else if (p.checkpoint > 0 && p.cell == fastrnn::Cell::lstm) {
    auto e = empty<T>({segments(p), p.B, p.H});
    out.checkpoints = e.mutable_data();
    extra = e;
  }
  fastrnn::KernelStatus status;
  {
    py::gil_scoped_release release;
    k.entries<T>().forward(&p, &out, &status);
  }
  check(status);
  return py::make_tuple(hs, h_n, c_n, gates, extra);
}

// The head's arguments (linear_cross_entropy, or the fused head of backward) with the same
// checks: rows h (N, H) with N given, weight (K, H), bias (K,), targets (N,) in 0..K-1,
// row_weights (N,) or None, a finite scale. `rows` names h in the messages.
template <class T>
fastrnn::HeadProblem<T> head_problem(Index N, Index H, const std::string& rows,
                                     const py::object& weight, const py::object& bias,
                                     const py::object& targets, const py::object& row_weights,
                                     double scale, const char* weight_name = "weight",
                                     const char* bias_name = "bias",
                                     const char* targets_name = "targets",
                                     const char* row_weights_name = "row_weights") {
  fastrnn::HeadProblem<T> p;
  py::array wa = as_array(weight, weight_name);
  if (wa.ndim() != 2 || wa.shape(0) < 1 || wa.shape(1) != H)
    throw py::value_error(std::string(weight_name) + " has shape " + array_shape(wa) +
                          ", expected (K, " + std::to_string(H) + "): K >= 1 classes and the " +
                          "hidden_size of " + rows);
  p.N = N;
  p.H = H;
  p.K = wa.shape(0);
  p.weight = input<T>(weight, weight_name, {p.K, p.H}, rows.c_str());
  p.bias = input<T>(bias, bias_name, {p.K}, rows.c_str());
  p.targets = int64_input(targets, targets_name, {p.N}, 0, p.K - 1,
                          "0..K-1 = 0.." + std::to_string(p.K - 1));
  if (!row_weights.is_none())
    p.row_weights = input<T>(row_weights, row_weights_name, {p.N}, rows.c_str());
  if (!std::isfinite(scale))
    throw py::value_error("scale must be finite, got " + std::to_string(scale));
  p.scale = static_cast<T>(scale);
  return p;
}

template <class T>
py::tuple backward_impl(const fastrnn::KernelTable& k, const std::string& cell,
                        const std::string& activation, double slope, const py::object& W_ih,
                        const py::object& W_hh, const py::object& x, const py::object& h0,
                        const py::object& c0, const py::object& hs, const py::object& gates,
                        const py::object& extra, const py::object& dhs, const py::object& dh_n,
                        const py::object& dc_n, const py::object& lengths, int num_threads,
                        bool step_norms, bool flush_denormals, const py::object& recurrent_mask,
                        const py::object& b_ih, const py::object& b_hh, Index checkpoint,
                        const py::object& head_weight, const py::object& head_bias,
                        const py::object& head_targets, const py::object& head_row_weights,
                        double head_scale, bool input_grad) {
  auto p = problem<T>(cell, activation, slope, W_ih, W_hh, x, h0, c0, lengths, num_threads,
                      flush_denormals);
  p.rec_mask = recurrent_mask_input<T>(recurrent_mask, p.B, p.H);
  const Index GH = fastrnn::gates_of(p.cell) * p.H;
  p.checkpoint = checkpoint_input(checkpoint, true, p.cell);
  const bool ckpt = p.checkpoint > 0, lstm = p.cell == fastrnn::Cell::lstm;
  const bool saves = p.cell != fastrnn::Cell::rnn && !ckpt;
  fastrnn::BackwardInput<T> in;
  in.hs = input<T>(hs, "hs", {p.steps, p.B, p.H});
  in.gates = optional_input<T>(gates, "gates", {p.steps, p.B, GH}, saves, cell);
  if (ckpt) {  // the recompute runs the forward: its biases, and lstm's checkpoints
    p.b_ih = input<T>(b_ih, "b_ih", {GH});
    p.b_hh = input<T>(b_hh, "b_hh", {GH});
    in.checkpoints = optional_input<T>(extra, "extra", {segments(p), p.B, p.H}, lstm, cell);
  } else {
    in.extra = optional_input<T>(extra, "extra", {p.steps, p.B, p.H}, saves, cell);
  }
  // the fused head on hs (rows t*B + b): dhs may then be None
  fastrnn::HeadProblem<T> head;
  const bool fused = !head_weight.is_none();
  if (fused) {
    head = head_problem<T>(p.steps * p.B, p.H, "hs", head_weight, head_bias, head_targets,
                           head_row_weights, head_scale, "head_weight", "head_bias",
                           "head_targets", "head_row_weights");
    in.head = &head;
  } else if (!head_bias.is_none() || !head_targets.is_none() || !head_row_weights.is_none()) {
    throw py::value_error("head_bias, head_targets and head_row_weights need head_weight");
  }
  if (!fused || !dhs.is_none()) in.dhs = input<T>(dhs, "dhs", {p.steps, p.B, p.H});
  in.dh_n = input<T>(dh_n, "dh_n", {p.B, p.H});
  in.dc_n = optional_input<T>(dc_n, "dc_n", {p.B, p.H}, lstm, cell);
  py::object dx = py::none();  // not computed without input_grad, or for token ids
  T* g_dx = nullptr;
  if (input_grad && !p.ids) {
    auto a = empty<T>({p.steps, p.B, p.D});
    g_dx = a.mutable_data();
    dx = a;
  }
  auto dh0 = empty<T>({p.B, p.H});
  auto dW_ih = empty<T>({GH, p.D});
  auto dW_hh = empty<T>({GH, p.H});
  auto db_ih = empty<T>({GH});
  auto db_hh = empty<T>({GH});
  fastrnn::BackwardOutput<T> g;
  g.dx = g_dx;
  g.dh0 = dh0.mutable_data();
  g.dW_ih = dW_ih.mutable_data();
  g.dW_hh = dW_hh.mutable_data();
  g.db_ih = db_ih.mutable_data();
  g.db_hh = db_hh.mutable_data();
  py::object dc0 = py::none(), norms = py::none();
  if (lstm) {
    auto a = empty<T>({p.B, p.H});
    g.dc0 = a.mutable_data();
    dc0 = a;
  }
  if (step_norms) {
    auto a = empty<T>({p.steps, p.B});
    g.norms = a.mutable_data();
    norms = a;
  }
  py::array_t<T> dweight, dbias;
  fastrnn::HeadOutput<T> head_out;
  double head_loss = 0.0;
  if (fused) {
    dweight = empty<T>({head.K, head.H});
    dbias = empty<T>({head.K});
    head_out.dweight = dweight.mutable_data();
    head_out.dbias = dbias.mutable_data();
    g.head = &head_out;
    g.head_loss = &head_loss;
  }
  fastrnn::KernelStatus status;
  {
    py::gil_scoped_release release;
    k.entries<T>().backward(&p, &in, &g, &status);
  }
  check(status);
  if (fused)
    return py::make_tuple(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, norms,
                          py::make_tuple(head_loss, dweight, dbias));
  return py::make_tuple(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, norms);
}

template <class T>
py::tuple linear_cross_entropy_impl(const fastrnn::KernelTable& k, const py::object& h,
                                    const py::object& weight, const py::object& bias,
                                    const py::object& targets, const py::object& row_weights,
                                    double scale, int num_threads, bool flush_denormals) {
  py::array ha = as_array(h, "h"), wa = as_array(weight, "weight");
  if (wa.ndim() != 2 || wa.shape(0) < 1 || wa.shape(1) < 1)
    throw py::value_error("weight has shape " + array_shape(wa) +
                          ", expected (K, H) with K >= 1 classes and H >= 1 features");
  const Index H = wa.shape(1);
  if (ha.ndim() != 2 || ha.shape(1) != H)
    throw py::value_error("h has shape " + array_shape(ha) + ", expected (N, " +
                          std::to_string(H) + ")");
  auto p = head_problem<T>(ha.shape(0), H, "h", weight, bias, targets, row_weights, scale);
  p.h = input<T>(h, "h", {p.N, p.H}, "h");
  set_threads(p, num_threads, flush_denormals);
  auto dh = empty<T>({p.N, p.H});
  auto dweight = empty<T>({p.K, p.H});
  auto dbias = empty<T>({p.K});
  fastrnn::HeadOutput<T> out;
  out.dh = dh.mutable_data();
  out.dweight = dweight.mutable_data();
  out.dbias = dbias.mutable_data();
  double loss;
  fastrnn::KernelStatus status;
  {
    py::gil_scoped_release release;
    loss = k.entries<T>().linear_cross_entropy(&p, &out, &status);
  }
  check(status);
  return py::make_tuple(loss, dh, dweight, dbias);
}

// The scalar type of a call is the dtype of its first float array (x, or W_hh when x is
// token ids; h for the head).
char scalar_kind(const py::object& x, const char* name = "x") {
  py::array a = as_array(x, name);
  if (has_dtype<float>(a)) return 'f';
  if (has_dtype<double>(a)) return 'd';
  throw py::type_error(std::string(name) + " has dtype " + dtype_str(a) +
                       ", expected float32 or float64");
}

// The scalar type of a forward or backward call: x's, or W_hh's when x is token ids.
char call_kind(const py::object& x, const py::object& W_hh) {
  return token_ids(x) ? scalar_kind(W_hh, "W_hh") : scalar_kind(x);
}

// The table of kernel module m (its capsule `_table`), refused unless it was built with
// these bindings' kernel_table.hpp and argument structs.
const fastrnn::KernelTable& table_of(const py::module_& m) {
  const std::string name = py::str(m.attr("__name__"));
  auto* t = static_cast<const fastrnn::KernelTable*>(
      PyCapsule_GetPointer(m.attr("_table").ptr(), fastrnn::kKernelTableCapsule));
  if (t == nullptr) throw py::error_already_set();
  auto layout_ok = [](const fastrnn::KernelLayout& l, auto scalar) {
    using T = decltype(scalar);
    return l.problem == sizeof(fastrnn::Problem<T>) &&
           l.forward_output == sizeof(fastrnn::ForwardOutput<T>) &&
           l.backward_input == sizeof(fastrnn::BackwardInput<T>) &&
           l.backward_output == sizeof(fastrnn::BackwardOutput<T>) &&
           l.head_problem == sizeof(fastrnn::HeadProblem<T>) &&
           l.head_output == sizeof(fastrnn::HeadOutput<T>);
  };
  if (t->version != fastrnn::kKernelTableVersion || t->size != sizeof(fastrnn::KernelTable) ||
      !layout_ok(t->f32.layout, 0.0f) || !layout_ok(t->f64.layout, 0.0))
    throw py::import_error(name + " has kernel table version " + std::to_string(t->version) +
                           " (" + std::to_string(t->size) + " bytes) built from other sources "
                           "than fastrnn._core, which expects version " +
                           std::to_string(fastrnn::kKernelTableVersion) + " (" +
                           std::to_string(sizeof(fastrnn::KernelTable)) +
                           " bytes); the extension modules come from different builds: "
                           "rebuild or reinstall fastrnn");
  return *t;
}

// Adds the kernel functions to kernel module m, bound to its table.
void define_kernels(py::module_ m) {
  const fastrnn::KernelTable* k = &table_of(m);
  m.def(
      "forward",
      [k](const std::string& cell, const std::string& activation, double negative_slope,
          const py::object& W_ih, const py::object& W_hh, const py::object& b_ih,
          const py::object& b_hh, const py::object& x, const py::object& h0, const py::object& c0,
          const py::object& lengths, int num_threads, bool flush_denormals, bool training,
          const py::object& recurrent_mask, Index checkpoint) {
        if (call_kind(x, W_hh) == 'f')
          return forward_impl<float>(*k, cell, activation, negative_slope, W_ih, W_hh, b_ih, b_hh,
                                     x, h0, c0, lengths, num_threads, flush_denormals, training,
                                     recurrent_mask, checkpoint);
        return forward_impl<double>(*k, cell, activation, negative_slope, W_ih, W_hh, b_ih, b_hh, x,
                                    h0, c0, lengths, num_threads, flush_denormals, training,
                                    recurrent_mask, checkpoint);
      },
      py::arg("cell"), py::arg("activation"), py::arg("negative_slope"), py::arg("W_ih"),
      py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("x"), py::arg("h0"),
      py::arg("c0") = py::none(), py::arg("lengths") = py::none(), py::arg("num_threads") = 1,
      py::arg("flush_denormals") = true, py::arg("training") = true,
      py::arg("recurrent_mask") = py::none(), py::arg("checkpoint") = 0,
      "Forward pass; returns (hs, h_n, c_n, gates, extra); c_n may be None, and gates, extra "
      "are None for rnn and with training=False (nothing saved for backward). recurrent_mask "
      "(B, H): recurrent dropout, W_hh (m * h_{t-1}) at every step. With checkpoint=k > 0 "
      "(checkpointed BPTT) gates is None and extra, for lstm, the cell states before steps "
      "0, k, 2k, ... (ceil(T / k), B, H). x may be int64 token ids (T, B) in 0..D-1 (D from "
      "W_ih), standing for their one-hot rows: the projection gathers W_ih's columns.");
  m.def(
      "set_blas",
      [k](std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t get_threads,
          std::uintptr_t set_threads, const std::string& name, bool int64,
          const std::string& kernel_isa) {
        const auto* found = std::find(std::begin(kBlasWidths), std::end(kBlasWidths), kernel_isa);
        const int level = static_cast<int>(found - std::begin(kBlasWidths));
        if (found == std::end(kBlasWidths))
          throw py::value_error("set_blas: kernel_isa must be 'generic', 'avx2' or 'avx512', got '" +
                                kernel_isa + "'");
        k->set_blas(sgemm, dgemm, get_threads, set_threads, int64, level, name.c_str());
      },
      py::arg("sgemm"), py::arg("dgemm"), py::arg("get_num_threads"),
      py::arg("set_num_threads"), py::arg("name"), py::arg("int64") = false,
      py::arg("kernel_isa") = "generic",
      "Hand over the Fortran-ABI sgemm/dgemm and the OpenBLAS thread getter/setter (raw "
      "addresses; 0 for none) that the large products use; `name` describes them; `int64`: "
      "the gemm functions take 64-bit integers (ILP64); `kernel_isa`: how wide the BLAS's "
      "own kernels run, in the modules' terms ('generic' if unknown; "
      "fastrnn._sysinfo.blas_width_isa), which decides whether every product goes to BLAS "
      "and the per-step product's thresholds (blas.hpp). With any one function missing, no "
      "product uses BLAS.");
  m.def(
      "blas", [k] { return std::string(k->blas_name()); },
      "What the large products use: the name given to set_blas, or 'none: <why>'.");
  m.def(
      "blas_calls", [k] { return k->blas_calls(); },
      "How many products this module has run through BLAS so far.");
  m.def(
      "blas_takes_all", [k] { return k->blas_takes_all(); },
      "Whether every product goes to BLAS (this module is the generic one and the BLAS's "
      "kernels are AVX2 or wider), not only the large ones (but the per-step products of "
      "fewer than 4 columns beside AVX2 kernels: step_uses_blas).");
  m.def(
      "step_uses_blas",
      [k](long long GH, long long H, long long nb) { return k->step_uses_blas(GH, H, nb); },
      py::arg("GH"), py::arg("H"), py::arg("nb"),
      "Whether a worker's per-step recurrent product (GH x H weights times nb columns: the "
      "forward's W_hh h, the backward's W_hh^T dA) goes to BLAS, by blas.hpp's rules for "
      "this module and the BLAS handed over now.");
  m.def(
      "blas_width",
      [k] {
        return std::string(kBlasWidths[std::clamp(k->blas_level(), 0, 2)]);
      },
      "How wide the BLAS's kernels run, as set_blas's kernel_isa said: 'generic', 'avx2' or "
      "'avx512' (with the module's own level, it decides which products go to BLAS).");
  m.def(
      "set_thread_team",
      [k](std::uintptr_t parallel, std::uintptr_t thread_num, std::uintptr_t num_threads,
          const std::string& name) {
        k->set_thread_team(parallel, thread_num, num_threads, name.c_str());
      },
      py::arg("parallel"), py::arg("thread_num"), py::arg("num_threads"), py::arg("name"),
      "Run the workers of every later call on a host's OpenMP thread team: the raw "
      "addresses of its GOMP_parallel, omp_get_thread_num and omp_get_num_threads; `name` "
      "describes it. With any one 0, the workers are threads of the module's own again.");
  m.def(
      "thread_team", [k] { return std::string(k->thread_team_name()); },
      "What the workers run on: the name given to set_thread_team, or 'own threads'.");
  m.def(
      "team_calls", [k] { return k->team_calls(); },
      "How many calls have run their workers on a host's thread team so far.");
  m.def(
      "backward",
      [k](const std::string& cell, const std::string& activation, double negative_slope,
          const py::object& W_ih, const py::object& W_hh, const py::object& x, const py::object& h0,
          const py::object& c0, const py::object& hs, const py::object& gates,
          const py::object& extra, const py::object& dhs, const py::object& dh_n,
          const py::object& dc_n, const py::object& lengths, int num_threads, bool step_norms,
          bool flush_denormals, const py::object& recurrent_mask, const py::object& b_ih,
          const py::object& b_hh, Index checkpoint, const py::object& head_weight,
          const py::object& head_bias, const py::object& head_targets,
          const py::object& head_row_weights, double head_scale, bool input_grad) {
        if (call_kind(x, W_hh) == 'f')
          return backward_impl<float>(*k, cell, activation, negative_slope, W_ih, W_hh, x, h0, c0,
                                      hs, gates, extra, dhs, dh_n, dc_n, lengths, num_threads,
                                      step_norms, flush_denormals, recurrent_mask, b_ih, b_hh,
                                      checkpoint, head_weight, head_bias, head_targets,
                                      head_row_weights, head_scale, input_grad);
        return backward_impl<double>(*k, cell, activation, negative_slope, W_ih, W_hh, x, h0, c0,
                                     hs, gates, extra, dhs, dh_n, dc_n, lengths, num_threads,
                                     step_norms, flush_denormals, recurrent_mask, b_ih, b_hh,
                                     checkpoint, head_weight, head_bias, head_targets,
                                     head_row_weights, head_scale, input_grad);
      },
      py::arg("cell"), py::arg("activation"), py::arg("negative_slope"), py::arg("W_ih"),
      py::arg("W_hh"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("hs"),
      py::arg("gates"), py::arg("extra"), py::arg("dhs"), py::arg("dh_n"), py::arg("dc_n"),
      py::arg("lengths") = py::none(), py::arg("num_threads") = 1, py::arg("step_norms") = false,
      py::arg("flush_denormals") = true, py::arg("recurrent_mask") = py::none(),
      py::arg("b_ih") = py::none(), py::arg("b_hh") = py::none(), py::arg("checkpoint") = 0,
      py::arg("head_weight") = py::none(), py::arg("head_bias") = py::none(),
      py::arg("head_targets") = py::none(), py::arg("head_row_weights") = py::none(),
      py::arg("head_scale") = 1.0, py::arg("input_grad") = true,
      "BPTT; returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, step_norms); dc0 and "
      "step_norms may be None. recurrent_mask: the forward's (a checkpointed recompute "
      "applies it too). Checkpointed (checkpoint=k > 0, the forward's k): gates is None, "
      "extra the forward's checkpoints (lstm; None for gru), and b_ih, b_hh are needed (each "
      "segment's activations are recomputed). The fused head (head_weight (K, H), head_bias "
      "(K,), head_targets (T*B,) int64, head_row_weights (T*B,) or None, head_scale: "
      "linear_cross_entropy's arguments on the rows of hs): dL/dh_t is the head's gradient "
      "plus dhs (which may then be None), computed block by block of steps; a 9th element "
      "(loss, dweight, dbias) is returned. dx is None with input_grad=False or token ids x "
      "(not computed; dW_ih is then a scatter-add into the ids' columns).");
  m.def(
      "linear_cross_entropy",
      [k](const py::object& h, const py::object& weight, const py::object& bias,
          const py::object& targets, const py::object& row_weights, double scale, int num_threads,
          bool flush_denormals) {
        if (scalar_kind(h, "h") == 'f')
          return linear_cross_entropy_impl<float>(*k, h, weight, bias, targets, row_weights, scale,
                                                  num_threads, flush_denormals);
        return linear_cross_entropy_impl<double>(*k, h, weight, bias, targets, row_weights, scale,
                                                 num_threads, flush_denormals);
      },
      py::arg("h"), py::arg("weight"), py::arg("bias"), py::arg("targets"),
      py::arg("row_weights") = py::none(), py::arg("scale") = 1.0, py::arg("num_threads") = 1,
      py::arg("flush_denormals") = true,
      "Linear softmax head + cross-entropy, forward and backward; returns (loss, dh, dweight, "
      "dbias).");
}

}  // namespace

namespace fastrnn {

void bind_kernels(py::module_& core) {
  core.def(
      "_bind_kernels", [](const py::module_& m) { define_kernels(m); }, py::arg("module"),
      "Add the kernel functions to a kernel module (fastrnn._kernels_<level>, which calls "
      "this when it is imported), bound to the KernelTable in its capsule `_table`.");
  core.def(
      "output_cache_info",
      [] {
        const fastrnn::OutputCacheStats s = fastrnn::OutputCache::instance().stats();
        py::dict d;
        d["limit"] = s.limit;
        d["held"] = s.held;
        d["blocks"] = s.blocks;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      },
      "The cache of the kernels' large output blocks: the bytes it may hold (limit) and "
      "holds, its blocks, and how many large requests it served (hits) or not (misses).");
  core.def(
      "set_output_cache_limit",
      [](py::ssize_t limit) {
        if (limit < 0)
          throw py::value_error("max_bytes must be >= 0, got " + std::to_string(limit));
        return fastrnn::OutputCache::instance().set_limit(static_cast<std::size_t>(limit));
      },
      py::arg("max_bytes"),
      "Set the most the output cache may hold (bytes; 0 keeps nothing), freeing its oldest "
      "blocks beyond it; returns the previous limit.");
  core.def(
      "_set_output_cache_poison",
      [](bool on) { fastrnn::OutputCache::instance().set_poison(on); }, py::arg("on"),
      "Tests: fill every block taken from the cache with 0xff bytes (NaN) first.");
}

}  // namespace fastrnn
