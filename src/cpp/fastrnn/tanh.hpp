// tanh of an Eigen array expression, vectorized for double too: fastrnn::tanh(a).
//
// Eigen 3.4 vectorizes tanh for float only; for double every element went through the C
// library's scalar tanh (glibc: expm1 plus tanh itself, 28% of a float64 S3 rnn training
// step in perf). Here, for double, as one fraction per element (one division besides the
// one inside Eigen's packet exp):
//     |x| < 0.625:  tanh(x) = x + x s P(s) / Q(s) = (x Q(s) + x s P(s)) / Q(s),  s = x^2,
//                   Cephes' rational approximation (relative accuracy kept near 0);
//     otherwise:    tanh(x) = sign(x) (e - 1) / (e + 1),  e = exp(2 min(|x|, 20)),
// (tanh(20) is 1 in double), with 0 (its sign too) and NaN passed through. Within 2.2 ulp
// of the long-double tanh over 10^6 points spread over 1e-2.5 to 1e0.5 in magnitude. An
// earlier version, e / (e + 2) with e = expm1(2x) from Eigen's packet exp and log (Kahan's
// formula), was within 6 ulp and 2.6x slower (4.4 against 1.7 ns an element at AVX-512,
// 7.3 against 2.5 at AVX2, 17 against 6.5 at SSE2; four divisions and a log against two
// divisions): a quarter of a float64 S3 rnn forward in perf. Every element, the tails of a
// loop included, goes through the same packet code, so a result does not depend on the
// alignment of its array. float keeps Eigen's own tanh (its bits are unchanged).
#pragma once

#include <Eigen/Core>
#include <type_traits>

namespace fastrnn {
namespace detail {

struct DoubleTanh {
  template <class Packet>
  Packet packetOp(const Packet& x) const {
    using namespace Eigen::internal;
    const Packet one = pset1<Packet>(1.0), zero = pzero(x);
    const Packet a = pmin(pabs(x), pset1<Packet>(20.0));
    const Packet small = pcmp_lt(a, pset1<Packet>(0.625));
    // |x| < 0.625: Cephes' P (degree 2) and monic Q (degree 3) in s = x^2
    const Packet s = pmul(x, x);
    Packet P = pset1<Packet>(-9.64399179425052238628e-1);
    P = pmadd(P, s, pset1<Packet>(-9.92877231001918586564e1));
    P = pmadd(P, s, pset1<Packet>(-1.61468768441708447952e3));
    Packet Q = padd(s, pset1<Packet>(1.12811678491632931402e2));
    Q = pmadd(Q, s, pset1<Packet>(2.23548839060100448583e3));
    Q = pmadd(Q, s, pset1<Packet>(4.84406305325125486048e3));
    const Packet num_small = pmadd(pmul(x, s), P, pmul(x, Q));
    // otherwise: (e - 1) / (e + 1) with x's sign
    const Packet e = pexp(padd(a, a));
    const Packet em1 = psub(e, one);
    const Packet num_large = pselect(pcmp_lt(x, zero), pnegate(em1), em1);
    const Packet r = pdiv(pselect(small, num_small, num_large), pselect(small, Q, padd(e, one)));
    // 0 keeps its sign; NaN (x != x) stays NaN
    return pselect(pcmp_eq(x, x), pselect(pcmp_eq(x, zero), x, r), x);
  }
  double operator()(double x) const {
    using Packet = typename Eigen::internal::packet_traits<double>::type;
    return Eigen::internal::pfirst(packetOp(Eigen::internal::pset1<Packet>(x)));
  }
};

}  // namespace detail

// tanh of every element of the array expression a.
template <class Derived>
auto tanh(const Eigen::ArrayBase<Derived>& a) {
  if constexpr (std::is_same_v<typename Derived::Scalar, double>)
    return a.unaryExpr(detail::DoubleTanh());
  else
    return a.tanh();
}

}  // namespace fastrnn

namespace Eigen {
namespace internal {
template <>
struct functor_traits<fastrnn::detail::DoubleTanh> {
  enum { Cost = 40 * NumTraits<double>::MulCost, PacketAccess = packet_traits<double>::HasExp && packet_traits<double>::HasDiv };
};
}  // namespace internal
}  // namespace Eigen
