#include "bandpo/options.h"

#include <sstream>

namespace bandpo {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// "divergence must be one of 'kl', 'tv'; got 'x'", from the table's "'kl', 'tv', " list.
std::string choice_error(const char* option, const char* choices, const std::string& got) {
  std::string list(choices);
  list.resize(list.size() - 2);
  return std::string(option) + " must be one of " + list + "; got '" + got + "'";
}

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace

const char* metric_name(int index) {
#define BANDPO_METRIC_NAME(value, name) name,
  static const char* const names[kNumMetrics] = {BANDPO_METRIC_TABLE(BANDPO_METRIC_NAME)};
#undef BANDPO_METRIC_NAME
  return (index >= 0 && index < kNumMetrics) ? names[index] : "";
}

#define BANDPO_QUOTED_NAME(value, text) "'" text "', "

#define BANDPO_DIV_ROW(value, text) if (name == text) return Divergence::value;
#define BANDPO_AGG_ROW(value, text) if (name == text) return Aggregation::value;
#define BANDPO_EST_ROW(value, text) if (name == text) return KlEstimator::value;
#define BANDPO_DIV_CASE(value, text) case Divergence::value: return text;
#define BANDPO_AGG_CASE(value, text) case Aggregation::value: return text;
#define BANDPO_EST_CASE(value, text) case KlEstimator::value: return text;

Divergence parse_divergence(const std::string& name) {
  BANDPO_DIVERGENCE_TABLE(BANDPO_DIV_ROW)
  fail(choice_error("divergence", BANDPO_DIVERGENCE_TABLE(BANDPO_QUOTED_NAME), name));
}

Aggregation parse_aggregation(const std::string& name) {
  BANDPO_AGGREGATION_TABLE(BANDPO_AGG_ROW)
  fail(choice_error("agg", BANDPO_AGGREGATION_TABLE(BANDPO_QUOTED_NAME), name));
}

KlEstimator parse_kl_estimator(const std::string& name) {
  BANDPO_KL_ESTIMATOR_TABLE(BANDPO_EST_ROW)
  fail(choice_error("kl_estimator", BANDPO_KL_ESTIMATOR_TABLE(BANDPO_QUOTED_NAME), name));
}

const char* divergence_name(Divergence d) {
  switch (d) { BANDPO_DIVERGENCE_TABLE(BANDPO_DIV_CASE) }
  return "?";
}

const char* aggregation_name(Aggregation a) {
  switch (a) { BANDPO_AGGREGATION_TABLE(BANDPO_AGG_CASE) }
  return "?";
}

const char* kl_estimator_name(KlEstimator e) {
  switch (e) { BANDPO_KL_ESTIMATOR_TABLE(BANDPO_EST_CASE) }
  return "?";
}

#define BANDPO_SCHEMA_ARG(name, ctype, schema_type, schema_default, cpp_default, scope) \
  ", " schema_type " " #name "=" schema_default
std::string bound_options_schema() { return BANDPO_BOUND_OPTION_TABLE(BANDPO_SCHEMA_ARG); }
std::string loss_options_schema() {
  return std::string(BANDPO_BOUND_OPTION_TABLE(BANDPO_SCHEMA_ARG)) + BANDPO_LOSS_OPTION_TABLE(BANDPO_SCHEMA_ARG);
}

void validate(const BoundOptions& o) {
  if (static_cast<int>(o.divergence) < 0 || static_cast<int>(o.divergence) >= kNumDivergences) fail("divergence: unknown code");
  if (!(o.delta > 0.0) || !std::isfinite(o.delta)) fail("delta must be a finite number > 0; got " + fmt(o.delta));
  if (!(o.eps_low >= 0.0 && o.eps_low <= 1.0)) fail("eps_low must be in [0, 1]; got " + fmt(o.eps_low));
  if (!(o.eps_high >= 0.0) || !std::isfinite(o.eps_high))
    fail("eps_high must be a finite number >= 0; got " + fmt(o.eps_high));
  if (!(o.ratio_max >= 1.0)) fail("ratio_max must be >= 1 (inf allowed); got " + fmt(o.ratio_max));
}

void validate(const LossOptions& o) {
  validate(o.bounds);
  if (!(o.dual_clip > 1.0)) fail("dual_clip must be > 1 (or None to turn it off); got " + fmt(o.dual_clip));
  if (static_cast<int>(o.agg) < 0 || static_cast<int>(o.agg) >= kNumAggregations) fail("agg: unknown code");
  if (!std::isnan(o.normalizer) && !(o.normalizer > 0.0 && std::isfinite(o.normalizer)))
    fail("normalizer must be a finite number > 0 (or None); got " + fmt(o.normalizer));
  if (!std::isfinite(o.kl_coef)) fail("kl_coef must be finite; got " + fmt(o.kl_coef));
  if (static_cast<int>(o.kl_estimator) < 0 || static_cast<int>(o.kl_estimator) >= kNumKlEstimators) fail("kl_estimator: unknown code");
}

}  // namespace bandpo
