// Per-token BandPO loss and its derivative with respect to the new log-probability.
//
//   r = exp(clamp(logp - old_logp, -20, 20))
//   L = max(-A r, -A clamp(r, lower, upper)),  and for A < 0 with dual-clip c:  L = min(L, -A c)
//
// For A >= 0 this is -A min(r, upper); for A < 0 it is -A min(max(r, lower), c). So a token only ever meets
// one of its bounds, and whether it does (r beyond the bound) needs one evaluation of the divergence at r,
// not the bound itself: g_f(p, r) is monotone on each side of r = 1. The bound value is needed only for the
// loss value of clipped tokens (their gradient is 0), which the callers compute with clipped_pg_loss().
#pragma once

#include <type_traits>

#include "bandpo/bounds.h"
#include "bandpo/config.h"
#include "bandpo/dtypes.h"
#include "bandpo/math.h"

namespace bandpo {

enum class KlEstimator : int { BANDPO_KL_ESTIMATOR_TABLE(BANDPO_ENUM_VALUE) };  // tables.h

template <class C>
struct LossParams {
  BoundParams<C> bounds;
  C dual_clip;  // +inf when off
  C kl_coef;
  KlEstimator kl_estimator;
};

// The three flags are 0 or 1 in the compute type rather than bool: a struct of floats stays in registers
// inside a vectorised loop, while bool members made GCC keep it in memory and give up vectorising.
template <class C>
struct PolicyTerms {
  C ratio;
  C pg_loss;        // the unweighted policy-gradient loss; for clipped tokens see clipped_pg_loss()
  C pg_grad;        // d pg_loss / d logp
  C clipped_upper;  // 1 if A > 0 and r above the upper bound (gradient 0), else 0
  C clipped_lower;  // 1 if A < 0 and r below the lower bound (gradient 0), else 0
  C dual_clipped;   // 1 if A < 0 and max(r, lower) above dual_clip (gradient 0), else 0
};

namespace detail {

// Whether r lies beyond the divergence's own bound (before relax and caps) on one side: above the upper
// bound when upper_side, below the lower one otherwise (KL: kl.h kl_beyond_bound, which needs no solve for the
// bound). The predicates combine with & and | rather than && and ||: without short-circuit branches they
// if-convert, and the token loops vectorise.
template <class C>
BANDPO_HD bool beyond_divergence_bound(C lp, C p, C q, C r, C log_ratio, bool upper_side, const BoundParams<C>& prm) {
  if (prm.divergence == Divergence::kl) {
    return kl_beyond_bound(lp, p, q, log_ratio, upper_side, prm.delta, prm.kl_table);
  }
  const RatioBounds<C> b = divergence_bounds(lp, p, q, prm);
  return (upper_side & (r > b.upper)) | (!upper_side & (r < b.lower));
}

}  // namespace detail

// r > upper, with upper = clamp(max(band upper, relax upper), 1, ratio_max), decided without solving for the
// band upper bound; `beyond` = beyond_divergence_bound(..., upper_side = true, ...).
template <class C>
BANDPO_HD bool above_upper_bound(C r, bool beyond, const BoundParams<C>& prm) {
  return (r > C(1)) & ((r > prm.ratio_max) | ((r > prm.relax_upper) & beyond));
}

// r < lower, with lower = clamp(min(band lower, relax lower), 0, 1); `beyond` for upper_side = false.
template <class C>
BANDPO_HD bool below_lower_bound(C r, bool beyond, const BoundParams<C>& prm) {
  return (r < C(1)) & (r < prm.relax_lower) & beyond;
}

namespace detail {

// r = exp(clamp(logp - lp, -20, 20)), and whether the clamp passes the gradient (torch.clamp passes it on the
// closed interval; so do we).
template <class C>
struct TokenRatio {
  C log_ratio;
  C r;
  bool live;
};
template <class C>
BANDPO_HD TokenRatio<C> token_ratio(C logp, C lp) {
  const C log_ratio_raw = logp - lp;
  TokenRatio<C> t;
  t.log_ratio = math::min(math::max(log_ratio_raw, C(-kLogRatioClamp)), C(kLogRatioClamp));
  t.live = (log_ratio_raw >= C(-kLogRatioClamp)) & (log_ratio_raw <= C(kLogRatioClamp));
  t.r = math::exp(t.log_ratio);
  return t;
}

// The terms once `beyond` says whether r lies beyond the bound of the advantage's side (before relax and caps).
template <class C>
BANDPO_HD PolicyTerms<C> policy_terms_beyond(const TokenRatio<C>& ratio, C advantage, bool beyond,
                                             const LossParams<C>& prm) {
  const C r = ratio.r;
  const bool upper = (advantage > C(0)) & above_upper_bound(r, beyond, prm.bounds);
  const bool lower = (advantage < C(0)) & below_lower_bound(r, beyond, prm.bounds);
  const bool dual = (advantage < C(0)) & !lower & (r > prm.dual_clip);
  const bool live = !(upper | lower | dual);
  PolicyTerms<C> t;
  t.ratio = r;
  t.pg_loss = -advantage * math::select(dual, prm.dual_clip, r);
  t.pg_grad = math::select(live & ratio.live, -advantage * r, C(0));
  t.clipped_upper = math::select(upper, C(1), C(0));
  t.clipped_lower = math::select(lower, C(1), C(0));
  t.dual_clipped = math::select(dual, C(1), C(0));
  return t;
}

}  // namespace detail

// Everything about one token's policy-gradient term except the loss value of a clipped token.
template <class C>
BANDPO_HD PolicyTerms<C> policy_terms(C logp, C old_logp, C advantage, const LossParams<C>& prm) {
  const C lp = sanitize_old_logp(old_logp);
  const detail::TokenRatio<C> ratio = detail::token_ratio(logp, lp);
  const C p = math::exp(lp);
  const C q = rest_mass(lp);
  // Only the side of the advantage's sign can clip (see the top of this file).
  const bool upper_side = advantage > C(0);
  const bool beyond = detail::beyond_divergence_bound(lp, p, q, ratio.r, ratio.log_ratio, upper_side, prm.bounds);
  return detail::policy_terms_beyond(ratio, advantage, beyond, prm);
}

// Loss value of a token that policy_terms() reported clipped at its upper or lower bound.
template <class C>
BANDPO_HD C clipped_pg_loss(C old_logp, C advantage, const LossParams<C>& prm) {
  return -advantage * token_bound_one_side(old_logp, advantage > C(0), prm.bounds);
}

// ---- bounds given by the caller (band_loss's lower and upper) ----------------------------------------------
// They stand for the divergence's own bounds; the relax interval, the ratio cap and dual clip apply as to those
// (finish_bounds), so that passing band_bounds' own outputs makes the same decisions and values. `bound` is the
// one of the advantage's side: given_bound_of_side().

template <class C>
BANDPO_HD C given_bound_of_side(C advantage, C lower, C upper) {
  return math::select(advantage > C(0), upper, lower);
}

template <class C>
BANDPO_HD PolicyTerms<C> policy_terms_given(C logp, C old_logp, C advantage, C bound, const LossParams<C>& prm) {
  const detail::TokenRatio<C> ratio = detail::token_ratio(logp, sanitize_old_logp(old_logp));
  const bool upper_side = advantage > C(0);
  const bool beyond = (upper_side & (ratio.r > bound)) | (!upper_side & (ratio.r < bound));
  return detail::policy_terms_beyond(ratio, advantage, beyond, prm);
}

template <class C>
BANDPO_HD C clipped_pg_loss_given(C advantage, C bound, const LossParams<C>& prm) {
  const RatioBounds<C> b = finish_bounds(RatioBounds<C>{bound, bound}, C(0), prm.bounds);
  return -advantage * math::select(advantage > C(0), b.upper, b.lower);
}

// Whether a valid position's given bounds break their rule: lower in [0, 1], upper in [1, cap] (NaN breaks
// both; lower <= upper follows), cap = given_upper_cap().
template <class C>
BANDPO_HD bool bad_given_bounds(C lower, C upper, C cap) {
  return !((lower >= C(0)) & (lower <= C(1)) & (upper >= C(1)) & (upper <= cap));
}

// ratio_max as the bounds' storage type T holds it: band_bounds' outputs in a half type hold a cap beyond the
// type's range (1e6 in float16) as inf, and must be taken back.
template <class T, class C>
BANDPO_HD C given_upper_cap(C ratio_max) {
  T stored[1];
  store(stored, 0, ratio_max);
  return load<C>(stored, 0);
}

template <class C>
struct KlPenalty {
  C value;
  C grad;  // d value / d logp
};

// Per-token estimate of KL(pi_new || pi_ref) from samples of pi_new, as verl defines them:
// k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 ("low_var_kl") = e^d - d - 1 with d = clamp(ref - logp, +-20),
// clamped to [-10, 10].
template <class C>
BANDPO_HD KlPenalty<C> kl_penalty(C logp, C ref_logp, KlEstimator estimator) {
  KlPenalty<C> k;
  const C diff = logp - ref_logp;
  if (estimator == KlEstimator::k1) {
    k.value = diff;
    k.grad = C(1);
  } else if (estimator == KlEstimator::k2) {
    k.value = C(0.5) * diff * diff;
    k.grad = diff;
  } else {
    const C d_raw = -diff;
    const C d = math::min(math::max(d_raw, C(-kKlLogRatioClamp)), C(kKlLogRatioClamp));
    const bool d_live = (d_raw >= C(-kKlLogRatioClamp)) & (d_raw <= C(kKlLogRatioClamp));
    const C em = math::expm1(d);
    const C raw = em - d;  // e^d - d - 1, computed without cancellation near d = 0
    k.value = math::min(math::max(raw, C(-kKlEstimateClamp)), C(kKlEstimateClamp));
    const bool value_live = (raw >= C(-kKlEstimateClamp)) & (raw <= C(kKlEstimateClamp));
    // d/dlogp (e^d - d - 1) = -(e^d - 1)
    k.grad = math::select(d_live & value_live, -em, C(0));
  }
  return k;
}

// kl_coef * x for the KL term of the loss and its gradient, exactly 0 when kl_coef is 0: the estimate may
// overflow (k2 of a log-ratio of 1e30 in float) or be infinite (ref_logp = -inf under k1/k2), and 0 * inf
// would make the loss of a run without KL penalty NaN (found by the fuzzer, tests/fuzz).
template <class C>
BANDPO_HD C kl_term(C kl_coef, C x) {
  return math::select(kl_coef == C(0), C(0), kl_coef * x);
}

// Whether a valid (weight != 0) position holds a value the op refuses: NaN in any input or in the weight, a
// log-probability (logp, old_logp or ref_logp) above kLogProbTolerance, or an infinite advantage. A
// probability above 1 is the symptom of a broken log-prob computation upstream (log-probs far above 0 have
// been seen in the wild); taking it as a ratio would train on garbage. The CPU driver raises naming the
// argument and index (bad_values.cpp); CUDA kernels count these positions and write NaN to the loss, since they
// cannot raise without a synchronisation. Pass ref_logp = 0 when there is none.
template <class C>
BANDPO_HD bool bad_token(C logp, C old_logp, C advantage, C ref_logp, C weight) {
  // !(x <= tol) is true for NaN as well; & and | (not && and ||) keep the token loops vectorisable.
  return !(logp <= C(kLogProbTolerance)) | !(old_logp <= C(kLogProbTolerance)) | !(advantage - advantage == C(0)) |
         !(ref_logp <= C(kLogProbTolerance)) | math::isnan(weight);
}

}  // namespace bandpo
