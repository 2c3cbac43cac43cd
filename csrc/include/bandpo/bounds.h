// Per-token Band bounds: the one definition of the math, shared by the CPU loops, the CUDA kernels and
// the C API.
//
// For a token with old probability p = exp(old_logp) and new probability s = p r, the Band bounds are the
// smallest and largest ratio r with g_f(p, s) <= delta, where the other tokens share the remaining mass
// 1 - p in their old proportions (the least-divergent completion).
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
#pragma once

#include "bandpo/config.h"
#include "bandpo/math.h"

namespace bandpo {

// Divergence codes shared with the C API and the torch bindings (see options.h for the names).
enum class Divergence : int { kl = 0, tv = 1, chi2 = 2, clip = 3 };

// Options of the bound computation, already validated and converted to the compute type C.
template <class C>
struct BoundParams {
  Divergence divergence;
  C delta;
  C clip_lower;  // 1 - eps_low: the fixed PPO interval, used by "clip" and by relax_high_p
  C clip_upper;  // 1 + eps_high
  bool relax_high_p;
  C ratio_max;  // cap on the upper bound (may be +inf)
};

template <class C>
struct RatioBounds {
  C lower;
  C upper;
};

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

// Root w < 0 of F(w) = delta for weights a, b (a + b = 1, both > 0).
template <class C>
BANDPO_HD C kl_shrink_log_ratio(C a, C b, C delta) {
  using math::max;
  using math::min;
  using math::select;
  C w = min(-math::sqrt(C(2) * delta * (b / a)), -delta / a);
  // Past exp's underflow the ratio is 0 either way; a finite start keeps the steps free of inf - inf.
  w = max(w, math::FloatTraits<C>::kExpMin);
  for (int step = 0; step < KlSteps<C>::kHalleySteps; ++step) {
    const C em = math::expm1(w);
    const C den = b - a * em;  // = 1 - a e^w > 0
    // b log1p(z) -> 0 as b -> 0 (z ~ 1/b): taken as 0 where z is no longer finite (b = +-0 or subnormal).
    const C z = a * -em / b;
    const C f = -a * w - select(b > C(0) && z < C(INFINITY), b * math::log1p(z), C(0));
    const C newton = (f - delta) * den / (a * em);
    const C half_curvature = b * (C(1) + em) / (C(2) * em * den);  // F'' / (2 F')
    C shrink = C(1) - newton * half_curvature;
    // Far from the root a Halley denominator near 0 would overshoot; fall back to Newton there.
    shrink = select(shrink < C(0.5), C(1), shrink);
    w = min(w - newton / shrink, C(0));
  }
  return w;
}

}  // namespace detail

// KL(pi_old || pi_new) bounds for p = exp(log_p), q = 1 - p (q computed as -expm1(log_p) by the caller).
// At p = 0 and q = 0 the formulas meet 0 * inf; the selects return their exact limits (0/inf and
// e^-delta-solution/1), which is also where the continuous formulas tend.
template <class C>
BANDPO_HD RatioBounds<C> kl_bounds(C p, C q, C delta) {
  const C w_lower = detail::kl_shrink_log_ratio(p, q, delta);
  const C w_upper = detail::kl_shrink_log_ratio(q, p, delta);
  RatioBounds<C> b;
  b.lower = math::select(p > C(0), math::exp(w_lower), C(0));
  b.upper = math::select(q > C(0), C(1) - (q / p) * math::expm1(w_upper), C(1));
  b.upper = math::select(p > C(0), b.upper, C(INFINITY));
  return b;
}

// Raw Band bounds before relax and caps, clamped to the simplex r in [0, 1/p].
template <class C>
BANDPO_HD RatioBounds<C> divergence_bounds(C p, C q, const BoundParams<C>& prm) {
  RatioBounds<C> b;
  switch (prm.divergence) {
    case Divergence::kl:
      return kl_bounds(p, q, prm.delta);
    case Divergence::tv: {
      const C half_width = prm.delta / p;  // |s - p| <= delta
      b.lower = C(1) - half_width;
      b.upper = C(1) + half_width;
      break;
    }
    case Divergence::chi2: {
      const C half_width = math::sqrt(prm.delta * q / p);  // (s - p)^2 / (p q) <= delta
      b.lower = C(1) - half_width;
      b.upper = C(1) + half_width;
      break;
    }
    default:
      b.lower = prm.clip_lower;
      b.upper = prm.clip_upper;
      return b;
  }
  b.lower = math::max(b.lower, C(0));
  b.upper = math::min(b.upper, C(1) / p);
  return b;
}

// Log-probabilities a hair above 0 (rounding in log_softmax) count as 0; clearly positive ones are not
// log-probabilities and give NaN bounds (band_loss rejects them before they get here).
constexpr double kOldLogpTolerance = 1e-6;

template <class C>
BANDPO_HD C sanitize_old_logp(C old_logp) {
  return math::select(old_logp > C(kOldLogpTolerance), C(NAN), math::min(old_logp, C(0)));
}

// The bounds band_bounds returns: divergence bounds, optionally united with the fixed interval, then
// lower in [0, 1] and upper in [1, ratio_max].
template <class C>
BANDPO_HD RatioBounds<C> band_bounds(C old_logp, const BoundParams<C>& prm) {
  const C lp = sanitize_old_logp(old_logp);
  const C p = math::exp(lp);
  const C q = -math::expm1(lp);
  RatioBounds<C> b = divergence_bounds(p, q, prm);
  if (prm.relax_high_p) {
    b.lower = math::min(b.lower, prm.clip_lower);
    b.upper = math::max(b.upper, prm.clip_upper);
  }
  b.lower = math::min(math::max(b.lower, C(0)), C(1));
  b.upper = math::max(math::min(b.upper, prm.ratio_max), C(1));
  // NaN input stays NaN (min/max above would otherwise turn it into a finite bound).
  b.lower = math::select(math::isnan(lp), lp, b.lower);
  b.upper = math::select(math::isnan(lp), lp, b.upper);
  return b;
}

}  // namespace bandpo
