// Per-token Band bounds: the one definition of the math, shared by the CPU loops, the CUDA kernels and
// the C API.
//
// Names by level: token_bounds / token_bound_one_side / token_bounds_pair (one token, here) -> the buffer
// drivers band_bounds_cpu (cpu.h) and cuda::band_bounds (cuda.h) -> the C ABI bandpo_band_bounds ->
// the op torch.ops.bandpo.band_bounds -> the Python face bandpo.band_bounds.
//
// For a token with old probability p = exp(old_logp) and new probability s = p r, the Band bounds are the
// smallest and largest ratio r with g_f(p, s) <= delta, where the other tokens share the remaining mass
// 1 - p in their old proportions (the least-divergent completion).
//
// KL has no closed form: its bounds, solved or read from a table, are bandpo/kl.h's.
#pragma once

#include <type_traits>

#include "bandpo/config.h"
#include "bandpo/kl.h"
#include "bandpo/math.h"
#include "bandpo/tables.h"

namespace bandpo {

// kLogProbTolerance, kLogRatioClamp, kKlLogRatioClamp, kKlEstimateClamp (tables.h).
#define BANDPO_DEFINE_CONSTANT(name, python_name, value) constexpr double name = value;
BANDPO_CONSTANT_TABLE(BANDPO_DEFINE_CONSTANT)
#undef BANDPO_DEFINE_CONSTANT

// Divergence codes (tables.h; the C API's bandpo_divergence is checked against them in c_api.cpp).
enum class Divergence : int { BANDPO_DIVERGENCE_TABLE(BANDPO_ENUM_VALUE) };

// Options of the bound computation, already validated and converted to the compute type C.
template <class C>
struct BoundParams {
  Divergence divergence;
  C delta;
  C clip_lower;  // 1 - eps_low: the fixed PPO interval of "clip"
  C clip_upper;  // 1 + eps_high
  // relax_high_p as numbers, so that no branch is left in the token loops: the interval the bounds are
  // united with, [1 - eps_low, 1 + eps_high] when on, the empty [+inf, -inf] when off.
  C relax_lower;
  C relax_upper;
  C ratio_max;  // cap on the upper bound (may be +inf)
  // "dcpo" (dcpo_lower, dcpo_upper): log(4 eps_low) as a head in C and the tail its rounding lost (from
  // double; -inf and 0 for eps_low = 0); sqrt(4 eps_high).
  C dcpo_log_four_eps_low, dcpo_log_four_eps_low_tail;
  C dcpo_sqrt_four_eps_high;
  // "kl" in float: the per-delta table (kl_table.h) the bounds are read from; coeffs == nullptr: solved.
  KlTable kl_table;
};

// DCPO's dynamic-adaptive clipping (Yang et al. 2025, arXiv 2509.02333), from the old probability p:
//   lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)),   upper = 1/2 + 1/2 sqrt(1 + 4 eps_high / p),
// the roots of r (1 - r) p = eps_low and r (r - 1) p = eps_high: the token's probability may move by about
// eps / r. Not clamped to the simplex r <= 1/p (no fixed interval is): these are DCPO's bounds as published.
// eps = 0 pins both at 1, also at p = 0.
//
// Lower: 1 - 4 eps / p = 1 - e^d with d = log(4 eps) - lp, log(4 eps) held as a head in C and the tail its
// rounding lost (to_params, in double), so that an eps whose 4 eps underflows C still counts (1e-70 in float
// against p = e^-149). Where the root term vanishes (p -> 4 eps_low) the bound has infinite slope in p; there
// (|d| < 1/4) it is -expm1(d): lp and the head agree within a factor of 2, so head - lp is exact and d is
// accurate to its last bit, where 1 - 4 eps / exp(lp) would carry an absolute 6e-8 (float) into the square
// root of something tiny. Elsewhere 1 - e^d has no cancellation, and e^d's rounding is far below the bound's.
template <class C>
BANDPO_HD C dcpo_lower(C lp, const BoundParams<C>& prm) {
  const C d = (prm.dcpo_log_four_eps_low - lp) + prm.dcpo_log_four_eps_low_tail;  // log(4 eps_low / p)
  const C inner = math::select((d < C(0.25)) & (d > C(-0.25)), C(0) - math::expm1(d), C(1) - math::exp(d));
  return math::select(prm.dcpo_log_four_eps_low == -C(INFINITY), C(1),
                      C(0.5) + C(0.5) * math::sqrt(math::max(inner, C(0))));
}

// Upper: sqrt(1 + x) as sqrt(1 + y^2) with y = sqrt(4 eps_high) e^(-lp/2) = sqrt(x), so that x overflowing
// (p below 1e-38 in float) does not make a representable bound (~1e19 there) infinite; past y = 1e8,
// 1 + y^2 is y^2 in either precision.
template <class C>
BANDPO_HD C dcpo_upper(C lp, const BoundParams<C>& prm) {
  const C y = prm.dcpo_sqrt_four_eps_high * math::exp(C(-0.5) * lp);
  const C root = math::select(y > C(1e8), y, math::sqrt(C(1) + y * y));
  return math::select(prm.dcpo_sqrt_four_eps_high == C(0), C(1), C(0.5) + C(0.5) * root);
}

// Whether the KL bounds come from the table: float compute with a table given (kl.h).
template <class C>
BANDPO_HD bool uses_kl_table(const BoundParams<C>& prm) {
  return prm.divergence == Divergence::kl && kl_reads_table<C>(prm.kl_table);
}

// Raw bounds before relax and caps: the Band bounds clamped to the simplex r in [0, 1/p], the fixed clip
// interval, or DCPO's. lp = log p (used by "dcpo" only), q = 1 - p.
template <class C>
BANDPO_HD RatioBounds<C> divergence_bounds(C lp, C p, C q, const BoundParams<C>& prm) {
  RatioBounds<C> b;
  switch (prm.divergence) {
    case Divergence::kl:
      return kl_token_bounds(lp, p, q, prm.delta, prm.kl_table);
    case Divergence::tv: {
      const C half_width = prm.delta / p;  // |s - p| <= delta
      b.lower = C(1) - half_width;
      b.upper = C(1) + half_width;
      break;
    }
    case Divergence::chi2: {
      // (s - p)^2 / (p q) <= delta. Two roots, not sqrt(delta q / p): q / p overflows float for subnormal p
      // (old_logp < -87.3), which made the upper bound inf (then ratio_max) instead of ~1/sqrt(p).
      const C half_width = math::sqrt(prm.delta * q) / math::sqrt(p);
      b.lower = C(1) - half_width;
      b.upper = C(1) + half_width;
      break;
    }
    case Divergence::dcpo:
      b.lower = dcpo_lower(lp, prm);
      b.upper = dcpo_upper(lp, prm);
      return b;
    default:
      b.lower = prm.clip_lower;
      b.upper = prm.clip_upper;
      return b;
  }
  b.lower = math::max(b.lower, C(0));
  b.upper = math::min(b.upper, C(1) / p);
  return b;
}

// Log-probabilities up to kLogProbTolerance above 0 (rounding in log_softmax) count as 0; clearly positive
// ones are not log-probabilities (a probability above 1) and give NaN bounds. band_loss refuses them, in
// old_logp and in logp alike (bad_token() in token_loss.h).

// q = 1 - p = -expm1(lp) of the other tokens, as +0 (never -0) at lp = 0: -expm1(0) is -0, and a division by
// -0 gives the opposite infinity, so the KL test of a token with old_logp = 0 read r = 1 - 1e-11 as
// infinitely far (clipped) in float64 (found by the fuzzer, tests/fuzz).
template <class C>
BANDPO_HD C rest_mass(C lp) {
  return C(0) - math::expm1(lp);
}

template <class C>
BANDPO_HD C sanitize_old_logp(C old_logp) {
  const C lp = math::select(old_logp > C(kLogProbTolerance), C(NAN), math::min(old_logp, C(0)));
  return math::select(math::isnan(old_logp), old_logp, lp);  // min(NaN, 0) would be 0
}

// Divergence bounds -> the bounds token_bounds returns: united with the relax interval, then lower in [0, 1]
// and upper in [1, ratio_max]; NaN log-probabilities stay NaN.
template <class C>
BANDPO_HD RatioBounds<C> finish_bounds(RatioBounds<C> b, C lp, const BoundParams<C>& prm) {
  b.lower = math::min(b.lower, prm.relax_lower);
  b.upper = math::max(b.upper, prm.relax_upper);
  b.lower = math::min(math::max(b.lower, C(0)), C(1));
  b.upper = math::max(math::min(b.upper, prm.ratio_max), C(1));
  b.lower = math::select(math::isnan(lp), lp, b.lower);
  b.upper = math::select(math::isnan(lp), lp, b.upper);
  return b;
}

template <class C>
BANDPO_HD RatioBounds<C> token_bounds(C old_logp, const BoundParams<C>& prm) {
  const C lp = sanitize_old_logp(old_logp);
  return finish_bounds(divergence_bounds(lp, math::exp(lp), rest_mass(lp), prm), lp, prm);
}

// The bounds of two tokens at once. For KL the four root-findings run in lockstep (kl.h kl_bounds_pair).
// (Returned by value: output references would keep the results in memory and stop vectorisation.)
template <class C>
struct BoundsPair {
  RatioBounds<C> first, second;
};

template <class C>
BANDPO_HD BoundsPair<C> token_bounds_pair(C old_logp0, C old_logp1, const BoundParams<C>& prm) {
  if (prm.divergence != Divergence::kl || uses_kl_table(prm)) {
    return BoundsPair<C>{token_bounds(old_logp0, prm), token_bounds(old_logp1, prm)};
  }
  const C lp0 = sanitize_old_logp(old_logp0), lp1 = sanitize_old_logp(old_logp1);
  const KlBoundsPair<C> k = kl_bounds_pair(math::exp(lp0), rest_mass(lp0), math::exp(lp1), rest_mass(lp1), prm.delta);
  return BoundsPair<C>{finish_bounds(k.first, lp0, prm), finish_bounds(k.second, lp1, prm)};
}

// Only the upper (or only the lower) bound: for KL this is one root-finding instead of two.
template <class C>
BANDPO_HD C token_bound_one_side(C old_logp, bool upper_side, const BoundParams<C>& prm) {
  const C lp = sanitize_old_logp(old_logp);
  const C p = math::exp(lp);
  const C q = rest_mass(lp);
  RatioBounds<C> b;
  if (prm.divergence == Divergence::kl) {
    b.lower = b.upper = kl_token_bound_one_side(lp, p, q, upper_side, prm.delta, prm.kl_table);
  } else {
    b = divergence_bounds(lp, p, q, prm);
  }
  b = finish_bounds(b, lp, prm);
  return math::select(upper_side, b.upper, b.lower);
}

}  // namespace bandpo
