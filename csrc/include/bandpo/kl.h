// Band-KL, one unit: the bounds of KL(pi_old || pi_new) per side, how they are computed, how exact they are,
// and the loss's clip decision against them. bounds.h and token_loss.h call the entries at the end of this file
// (kl_token_bounds, kl_token_bound_one_side, kl_bounds_pair, kl_beyond_bound) and nothing else of KL.
//
// KL(pi_old || pi_new) has no closed form. Both sides reduce to one problem: with weights a + b = 1 and
// w = log of the ratio of the side that shrinks,
//     F(w) = -a w - b log1p(-(a/b) expm1(w)) = delta,   w < 0,
// where the lower bound is (a, b) = (p, 1-p), r = e^w, and the upper bound is the lower bound of the
// complement, (a, b) = (1-p, p), r = 1 - ((1-p)/p) expm1(w). F is convex and decreasing on w < 0, with
//     F' = a expm1(w) / (b - a expm1(w)),   F'' = a b e^w / (b - a expm1(w))^2.
// Start: both -sqrt(2 delta b/a) (from F <= F''(0) w^2 / 2) and -delta/a (from F <= -a w) lie right of
// the root, and the smaller is within a few percent of it over the whole domain; Halley steps from there
// reach the double-precision root in 3 steps and the float one in 2 (checked against a 50-digit
// reference in tests/test_exactness.py). Each step costs one expm1 and one log1p and no branch.
//
// Two algorithms, one answer:
//   - the solve (below): float64 inputs always, float inputs where no table is given; exact to 1e-11 relative
//     in float64 and 4e-6 in float32 (tests/test_exactness.py, against the 50-digit table in tests/data);
//   - the table (kl_table.h, built by kl_table_build.h from this solve): float inputs (float32, bfloat16,
//     float16) when the call has one. The CPU keeps the last 4 deltas' tables (kl_table_cache.cpp); each device its
//     first 8 (cuda/kl_table.cu, which builds in the call's workspace past them and under graph capture). A table whose build check finds an error
//     above kKlTableMaxError is refused, and the call solves; BANDPO_KL_TABLE=0 makes every call solve.
//     Within 3.1e-7 of the float64 solve over delta in [1e-12, 1e6] (tests/test_kl_table.py).
// The loss's clip decision (kl_beyond_bound) needs no bound where it solves (KL at the token's ratio above
// delta is the test on either side) and compares the log-ratio with the table's log bound where it reads one:
// the same decision as comparing the ratio with the bound band_bounds reports, to float rounding.
//
// The float64 reference (python/bandpo/reference.py) runs the same start and step rule with one more step.
#pragma once

#include <type_traits>

#include "bandpo/config.h"
#include "bandpo/kl_table.h"
#include "bandpo/math.h"
#include "bandpo/ratio_bounds.h"

namespace bandpo {

namespace detail {

template <class C>
struct KlSteps;
template <>
struct KlSteps<double> {
  static constexpr int kHalleySteps = 3;
};
template <>
struct KlSteps<float> {
  static constexpr int kHalleySteps = 2;
};

// Roots w < 0 of F(w) = delta for N problems (a[k], b[k]) at once (a + b = 1, both > 0). Several problems
// are stepped in lockstep because each Halley step is a long dependent chain (expm1 -> log1p -> divide):
// interleaved, the CPU overlaps the chains of the lower and the upper bound instead of waiting on each.
//
// The Halley step N / (1 - N H), with N = (F - delta) / F' and H = F'' / (2 F'), written over one division:
//   g = F - delta,  step = 2 g (b - a em) em / (2 a em^2 - g b e^w);
// where that denominator falls below a em^2 (Halley would more than double the Newton step, far from the
// root) the Newton step is taken instead (denominator 2 a em^2).
template <class C, int N>
BANDPO_HD void kl_shrink_log_ratios(const C (&a)[N], const C (&b)[N], C delta, C (&w)[N]) {
  using math::max;
  using math::min;
  using math::select;
  C a_over_b[N];
  bool b_term_live[N];
  BANDPO_UNROLL
  for (int k = 0; k < N; ++k) {
    a_over_b[k] = a[k] / b[k];
    w[k] = min(-math::sqrt(C(2) * delta / a_over_b[k]), -delta / a[k]);
    // Past exp's underflow the ratio is 0 either way; a finite start keeps the steps free of inf - inf.
    w[k] = max(w[k], math::FloatTraits<C>::kExpMin);
    // b log1p(z) -> 0 as b -> 0 (z ~ 1/b): taken as 0 where z is no longer finite (b = +-0 or subnormal).
    b_term_live[k] = (b[k] > C(0)) & (a_over_b[k] < C(INFINITY));
  }
  BANDPO_UNROLL
  for (int step = 0; step < KlSteps<C>::kHalleySteps; ++step) {
    BANDPO_UNROLL
    for (int k = 0; k < N; ++k) {
      const C em = math::expm1(w[k]);
      const C z = a_over_b[k] * -em;
      const C g = -a[k] * w[k] - select(b_term_live[k], b[k] * math::log1p(z), C(0)) - delta;
      const C a_em2 = a[k] * em * em;
      const C g_b_e = g * b[k] * (C(1) + em);
      const C den = select(a_em2 < g_b_e, C(2) * a_em2, C(2) * a_em2 - g_b_e);
      // Kept in [kExpMin, 0]: left of kExpMin e^w is 0 and expm1(w) is -1, so the ratio is the same there,
      // and a step from a root far left of it (a huge delta / p) overflows to -inf, then to NaN.
      w[k] = max(min(w[k] - C(2) * g * (b[k] - a[k] * em) * em / den, C(0)), math::FloatTraits<C>::kExpMin);
    }
  }
}

template <class C>
BANDPO_HD C kl_shrink_log_ratio(C a, C b, C delta) {
  const C as[1] = {a};
  const C bs[1] = {b};
  C w[1];
  kl_shrink_log_ratios(as, bs, delta, w);
  return w[0];
}

}  // namespace detail

// KL(pi_old || pi_new) bounds for p = exp(log_p), q = 1 - p (q computed as -expm1(log_p) by the caller).
// At p = 0 and q = 0 the formulas meet 0 * inf; the selects return their exact limits (0/inf and
// e^-delta-solution/1), which is also where the continuous formulas tend.
template <class C>
BANDPO_HD C kl_lower_from_root(C p, C w_lower) {
  return math::select(p > C(0), math::exp(w_lower), C(0));
}

template <class C>
BANDPO_HD C kl_upper_from_root(C p, C q, C w_upper) {
  const C upper = math::select(q > C(0), C(1) - (q / p) * math::expm1(w_upper), C(1));
  return math::select(p > C(0), upper, C(INFINITY));
}

template <class C>
BANDPO_HD RatioBounds<C> kl_bounds(C p, C q, C delta) {
  const C a[2] = {p, q};  // lower bound: the token shrinks; upper bound: the rest shrinks
  const C b[2] = {q, p};
  C w[2];
  detail::kl_shrink_log_ratios(a, b, delta, w);
  return RatioBounds<C>{kl_lower_from_root(p, w[0]), kl_upper_from_root(p, q, w[1])};
}

// Both bounds of two tokens at once: the four root-findings in lockstep, which on an out-of-order CPU is
// 1.3-1.8x faster per token than one token at a time (see kl_shrink_log_ratios).
template <class C>
struct KlBoundsPair {
  RatioBounds<C> first, second;
};

template <class C>
BANDPO_HD KlBoundsPair<C> kl_bounds_pair(C p0, C q0, C p1, C q1, C delta) {
  const C a[4] = {p0, q0, p1, q1};
  const C b[4] = {q0, p0, q1, p1};
  C w[4];
  detail::kl_shrink_log_ratios(a, b, delta, w);
  return KlBoundsPair<C>{RatioBounds<C>{kl_lower_from_root(p0, w[0]), kl_upper_from_root(p0, q0, w[1])},
                         RatioBounds<C>{kl_lower_from_root(p1, w[2]), kl_upper_from_root(p1, q1, w[3])}};
}

// KL(pi_old || pi_new) at ratio r = exp(log_ratio) with the rest of the mass rescaled:
// -p log r - q log(1 - p (r - 1) / q); +inf where p r >= 1 (outside the simplex).
template <class C>
BANDPO_HD C kl_at_ratio(C p, C q, C log_ratio) {
  const C arg = -p * math::expm1(log_ratio) / q;
  // Selects one condition at a time (not (q > 0) & (arg < inf)): a combined mask feeding a select stops
  // GCC's vectoriser here.
  C rest = math::select(arg < C(INFINITY), q * math::log1p(math::max(arg, C(-1))), C(0));
  rest = math::select(q > C(0), rest, C(0));
  return math::select(arg <= C(-1), C(INFINITY), -p * log_ratio - rest);
}

// ---- The entries: a token with lp = log p, p and q = 1 - p (q as -expm1(lp)); `table` null: solve ----------

// Whether the bounds of compute type C come from the table: float with a table given.
template <class C>
BANDPO_HD bool kl_reads_table(const KlTable& table) {
  return std::is_same<C, float>::value && table.coeffs != nullptr;
}

// Both bounds, before relax and caps.
template <class C>
BANDPO_HD RatioBounds<C> kl_token_bounds(C lp, C p, C q, C delta, const KlTable& table) {
  if constexpr (std::is_same<C, float>::value) {
    if (table.coeffs != nullptr) return kl_table_bounds<RatioBounds<C>>(lp, table);
  }
  return kl_bounds(p, q, delta);
}

// One side's bound (upper_side: the upper one): one root-finding instead of two, or one table lookup.
template <class C>
BANDPO_HD C kl_token_bound_one_side(C lp, C p, C q, bool upper_side, C delta, const KlTable& table) {
  if constexpr (std::is_same<C, float>::value) {
    if (table.coeffs != nullptr) return kl_table_bound_one_side(lp, upper_side, table);
  }
  const C w = detail::kl_shrink_log_ratio(math::select(upper_side, q, p), math::select(upper_side, p, q), delta);
  return math::select(upper_side, kl_upper_from_root(p, q, w), kl_lower_from_root(p, w));
}

// The loss's clip decision on one side: whether r = exp(log_ratio) lies beyond the KL bound, above the upper one
// when upper_side, below the lower one otherwise. The predicates combine with & and | rather than && and ||:
// without short-circuit branches they if-convert, and the token loops vectorise. The table comes by value: taken
// by reference (into the caller's params), GCC 12 stopped vectorising the loss's token loop of the table variant
// (4x slower forward at 1M float32 tokens with AVX-512; benchmarks/bench_binding_overhead.py found it).
template <class C>
BANDPO_HD bool kl_beyond_bound(C lp, C p, C q, C log_ratio, bool upper_side, C delta, KlTable table) {
  if constexpr (std::is_same<C, float>::value) {
    if (table.coeffs != nullptr) {
      const C log_bound = kl_table_log_bound_one_side(lp, upper_side, table);
      return (upper_side & (log_ratio > log_bound)) | (!upper_side & (log_ratio < log_bound));
    }
  }
  return kl_at_ratio(p, q, log_ratio) > delta;
}

}  // namespace bandpo
