// Options of band_bounds and band_loss as users give them (names, doubles), their validation, and their
// conversion to the compute-type parameters of the per-token math.
#pragma once

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "bandpo/bounds.h"
#include "bandpo/token_loss.h"

namespace bandpo {

// How per-token losses are reduced to the scalar loss (w = mask weight, L = per-token loss):
//   token_mean:              sum(w L) / sum(w)
//   seq_mean_token_sum:      sum(w L) / B
//   seq_mean_token_mean:     sum_b [sum_t(w L) / sum_t(w)] / B   (a sequence with no valid token adds 0)
//   seq_mean_token_sum_norm: sum(w L) / (B T)                   (Dr. GRPO)
// `normalizer` replaces the denominator (sum(w), B, B or B T) when set.
enum class Aggregation : int { token_mean = 0, seq_mean_token_sum = 1, seq_mean_token_mean = 2, seq_mean_token_sum_norm = 3 };

struct BoundOptions {
  Divergence divergence = Divergence::kl;
  double delta = 0.05;      // trust-region radius of the divergence, > 0
  double eps_low = 0.2;     // fixed interval [1 - eps_low, 1 + eps_high] of "clip" and relax_high_p
  double eps_high = 0.28;
  bool relax_high_p = false;  // unite the band with the fixed interval
  double ratio_max = 10.0;    // cap on the upper bound, >= 1, may be inf
};

struct LossOptions {
  BoundOptions bounds;
  double dual_clip = std::numeric_limits<double>::infinity();  // c > 1; inf = off
  Aggregation agg = Aggregation::token_mean;
  double normalizer = std::numeric_limits<double>::quiet_NaN();  // NaN = use the aggregation's own
  double kl_coef = 0.0;
  KlEstimator kl_estimator = KlEstimator::k3;
};

// Number of floats in the metrics vector of band_loss, and their order.
enum Metric : int {
  kPgClipfrac = 0,     // fraction of valid tokens whose clipped loss exceeds the unclipped (verl's pg_clipfrac)
  kClipfracUpper = 1,  // A > 0 and r above the upper bound
  kClipfracLower = 2,  // A < 0 and r below the lower bound
  kDualClipfrac = 3,   // A < 0 and held at -A c by dual-clip (verl's pg_clipfrac_lower)
  kPpoKl = 4,          // mean of old_logp - logp (verl's ppo_kl)
  kRatioMean = 5,      // mean ratio r (after the log-ratio clamp)
  kRefKl = 6,          // mean of the KL estimator to ref_logp (0 without ref_logp)
  kPgLoss = 7,         // the policy-gradient part of the loss, aggregated like the loss
  kNumMetrics = 8,
};

const char* metric_name(int index);

Divergence parse_divergence(const std::string& name);
Aggregation parse_aggregation(const std::string& name);
KlEstimator parse_kl_estimator(const std::string& name);
const char* divergence_name(Divergence d);
const char* aggregation_name(Aggregation a);
const char* kl_estimator_name(KlEstimator e);

// Throw std::invalid_argument naming the offending option.
void validate(const BoundOptions& options);
void validate(const LossOptions& options);

template <class C>
BoundParams<C> to_params(const BoundOptions& o) {
  const C clip_lower = static_cast<C>(1.0 - o.eps_low);
  const C clip_upper = static_cast<C>(1.0 + o.eps_high);
  return BoundParams<C>{o.divergence,
                        static_cast<C>(o.delta),
                        clip_lower,
                        clip_upper,
                        o.relax_high_p ? clip_lower : C(INFINITY),
                        o.relax_high_p ? clip_upper : -C(INFINITY),
                        static_cast<C>(o.ratio_max)};
}

template <class C>
LossParams<C> to_params(const LossOptions& o) {
  return LossParams<C>{to_params<C>(o.bounds), static_cast<C>(o.dual_clip), static_cast<C>(o.kl_coef),
                       o.kl_estimator};
}

}  // namespace bandpo
