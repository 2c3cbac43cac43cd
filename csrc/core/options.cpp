#include "bandpo/options.h"

#include <sstream>

namespace bandpo {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace

const char* metric_name(int index) {
  static const char* const names[kNumMetrics] = {"pg_clipfrac", "clipfrac_upper", "clipfrac_lower", "dual_clipfrac",
                                                 "ppo_kl",      "ratio_mean",     "ref_kl",         "pg_loss"};
  return (index >= 0 && index < kNumMetrics) ? names[index] : "";
}

Divergence parse_divergence(const std::string& name) {
  if (name == "kl") return Divergence::kl;
  if (name == "tv") return Divergence::tv;
  if (name == "chi2") return Divergence::chi2;
  if (name == "clip") return Divergence::clip;
  fail("divergence must be one of 'kl', 'tv', 'chi2', 'clip'; got '" + name + "'");
}

Aggregation parse_aggregation(const std::string& name) {
  if (name == "token-mean") return Aggregation::token_mean;
  if (name == "seq-mean-token-sum") return Aggregation::seq_mean_token_sum;
  if (name == "seq-mean-token-mean") return Aggregation::seq_mean_token_mean;
  if (name == "seq-mean-token-sum-norm") return Aggregation::seq_mean_token_sum_norm;
  fail("agg must be one of 'token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', "
       "'seq-mean-token-sum-norm'; got '" + name + "'");
}

KlEstimator parse_kl_estimator(const std::string& name) {
  if (name == "k1") return KlEstimator::k1;
  if (name == "k2") return KlEstimator::k2;
  if (name == "k3") return KlEstimator::k3;
  fail("kl_estimator must be one of 'k1', 'k2', 'k3'; got '" + name + "'");
}

const char* divergence_name(Divergence d) {
  switch (d) {
    case Divergence::kl: return "kl";
    case Divergence::tv: return "tv";
    case Divergence::chi2: return "chi2";
    case Divergence::clip: return "clip";
  }
  return "?";
}

const char* aggregation_name(Aggregation a) {
  switch (a) {
    case Aggregation::token_mean: return "token-mean";
    case Aggregation::seq_mean_token_sum: return "seq-mean-token-sum";
    case Aggregation::seq_mean_token_mean: return "seq-mean-token-mean";
    case Aggregation::seq_mean_token_sum_norm: return "seq-mean-token-sum-norm";
  }
  return "?";
}

const char* kl_estimator_name(KlEstimator e) {
  switch (e) {
    case KlEstimator::k1: return "k1";
    case KlEstimator::k2: return "k2";
    case KlEstimator::k3: return "k3";
  }
  return "?";
}

void validate(const BoundOptions& o) {
  if (static_cast<int>(o.divergence) < 0 || static_cast<int>(o.divergence) > 3) fail("divergence: unknown code");
  if (!(o.delta > 0.0) || !std::isfinite(o.delta)) fail("delta must be a finite number > 0; got " + fmt(o.delta));
  if (!(o.eps_low >= 0.0 && o.eps_low <= 1.0)) fail("eps_low must be in [0, 1]; got " + fmt(o.eps_low));
  if (!(o.eps_high >= 0.0) || !std::isfinite(o.eps_high))
    fail("eps_high must be a finite number >= 0; got " + fmt(o.eps_high));
  if (!(o.ratio_max >= 1.0)) fail("ratio_max must be >= 1 (inf allowed); got " + fmt(o.ratio_max));
}

void validate(const LossOptions& o) {
  validate(o.bounds);
  if (!(o.dual_clip > 1.0)) fail("dual_clip must be > 1 (or None to turn it off); got " + fmt(o.dual_clip));
  if (static_cast<int>(o.agg) < 0 || static_cast<int>(o.agg) > 3) fail("agg: unknown code");
  if (!std::isnan(o.normalizer) && !(o.normalizer > 0.0 && std::isfinite(o.normalizer)))
    fail("normalizer must be a finite number > 0 (or None); got " + fmt(o.normalizer));
  if (!std::isfinite(o.kl_coef)) fail("kl_coef must be finite; got " + fmt(o.kl_coef));
  if (static_cast<int>(o.kl_estimator) < 0 || static_cast<int>(o.kl_estimator) > 2) fail("kl_estimator: unknown code");
}

}  // namespace bandpo
