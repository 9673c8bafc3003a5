// tanh of an Eigen array expression, vectorized for double too: fastrnn::tanh(a).
//
// Eigen 3.4 vectorizes tanh for float only; for double every element went through the C
// library's scalar tanh (glibc: expm1 plus tanh itself, 28% of a float64 S3 rnn training
// step in perf). Here, for double,
//     tanh(x) = e / (e + 2),   e = expm1(2x),
// with expm1 from Eigen's packet exp and log (Kahan's u - 1 = (e^x - 1) x / log(e^x), exact
// near 0, so tanh keeps its relative accuracy for small x; a few ulp elsewhere), x clamped to
// [-20, 20] first (tanh(20) is 1 in double) and NaN passed through. Every element, the tails
// of a loop included, goes through the same packet code, so a result does not depend on the
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
    const Packet limit = pset1<Packet>(20.0), two = pset1<Packet>(2.0);
    const Packet clamped = pmin(pmax(x, pnegate(limit)), limit);
    const Packet e = generic_expm1(pmul(two, clamped));
    return pselect(pcmp_eq(x, x), pdiv(e, padd(e, two)), x);  // NaN stays NaN
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
  enum { Cost = 40 * NumTraits<double>::MulCost, PacketAccess = packet_traits<double>::HasExp && packet_traits<double>::HasLog };
};
}  // namespace internal
}  // namespace Eigen
