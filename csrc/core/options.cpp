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

#define BANDPO_QUOTED_NAME(value, text, ...) "'" text "', "

#define BANDPO_DIV_ROW(value, text, ...) \
  if (name == text) return Divergence::value;
#define BANDPO_AGG_ROW(value, text, ...) \
  if (name == text) return Aggregation::value;
#define BANDPO_EST_ROW(value, text, ...) \
  if (name == text) return KlEstimator::value;
#define BANDPO_DIV_CASE(value, text, ...) \
  case Divergence::value:                 \
    return text;
#define BANDPO_AGG_CASE(value, text, ...) \
  case Aggregation::value:                \
    return text;
#define BANDPO_EST_CASE(value, text, ...) \
  case KlEstimator::value:                \
    return text;

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

#define BANDPO_SCHEMA_ARG(name, ctype, schema_type, schema_default, ...) ", " schema_type " " #name "=" schema_default
std::string bound_options_schema() { return BANDPO_BOUND_OPTION_TABLE(BANDPO_SCHEMA_ARG); }
std::string loss_options_schema() {
  return std::string(BANDPO_BOUND_OPTION_TABLE(BANDPO_SCHEMA_ARG)) + BANDPO_LOSS_OPTION_TABLE(BANDPO_SCHEMA_ARG);
}
std::string logit_options_schema() { return BANDPO_LOGIT_OPTION_TABLE(BANDPO_SCHEMA_ARG); }

namespace {
// The value in an error message: numbers as printed by C++, choices by name.
std::string describe(double v) { return fmt(v); }
std::string describe(bool v) { return v ? "True" : "False"; }
std::string describe(int64_t v) { return std::to_string(v); }
template <class Choice>
std::string describe(Choice c) {
  return choice_name(c);
}
}  // namespace

// Each option's condition from its row of tables.h; choice codes out of range (C callers) are refused too.
#define BANDPO_VALIDATE_ROW(name, ctype, schema_type, schema_default, cpp_default, scope, valid, requirement) \
  {                                                                                                           \
    const ctype& v = o.name;                                                                                  \
    if (!(valid)) fail(#name " must be " requirement "; got " + describe(v));                                 \
  }

void validate(const BoundOptions& o) {
  if (static_cast<int>(o.divergence) < 0 || static_cast<int>(o.divergence) >= kNumDivergences)
    fail("divergence: unknown code");
  BANDPO_BOUND_OPTION_TABLE(BANDPO_VALIDATE_ROW)
}

void validate(const LossOptions& o) {
  validate(o.bounds);
  if (static_cast<int>(o.agg) < 0 || static_cast<int>(o.agg) >= kNumAggregations) fail("agg: unknown code");
  if (static_cast<int>(o.kl_estimator) < 0 || static_cast<int>(o.kl_estimator) >= kNumKlEstimators)
    fail("kl_estimator: unknown code");
  BANDPO_LOSS_OPTION_TABLE(BANDPO_VALIDATE_ROW)
}

void validate(const LogitOptions& o) { BANDPO_LOGIT_OPTION_TABLE(BANDPO_VALIDATE_ROW) }

}  // namespace bandpo
