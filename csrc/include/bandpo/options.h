// Options of band_bounds and band_loss as users give them (names, doubles), their validation, and their
// conversion to the compute-type parameters of the per-token math.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "bandpo/bounds.h"
#include "bandpo/tables.h"
#include "bandpo/token_loss.h"

namespace bandpo {

// How per-token losses are reduced to the scalar loss (w = mask weight, L = per-token loss):
//   token_mean:              sum(w L) / sum(w)
//   seq_mean_token_sum:      sum(w L) / B
//   seq_mean_token_mean:     sum_b [sum_t(w L) / sum_t(w)] / B   (a sequence with no valid token adds 0)
//   seq_mean_token_sum_norm: sum(w L) / (B T)                   (Dr. GRPO)
// `normalizer` replaces the denominator (sum(w), B, B or B T) when set.
enum class Aggregation : int { BANDPO_AGGREGATION_TABLE(BANDPO_ENUM_VALUE) };

constexpr int kNumDivergences = 0 BANDPO_DIVERGENCE_TABLE(BANDPO_COUNT_ROW);
constexpr int kNumAggregations = 0 BANDPO_AGGREGATION_TABLE(BANDPO_COUNT_ROW);
constexpr int kNumKlEstimators = 0 BANDPO_KL_ESTIMATOR_TABLE(BANDPO_COUNT_ROW);

// Sentinels of the optional options (tables.h): dual_clip off, normalizer unset.
constexpr double kOffInfinity = std::numeric_limits<double>::infinity();
constexpr double kUnsetNaN = std::numeric_limits<double>::quiet_NaN();

// Ranges of the options (tables.h). The loss scales: normalizer is a count of tokens or sequences, divided
// by the data-parallel size where the count is global: below 1e-6 or above 1e18 it is a unit mistake, and
// 1/normalizer would push a float32 loss or gradient past its range (1e-300 gave a silent inf). kl_coef
// multiplies a per-token KL estimate; |kl_coef| > 1e6 is no longer a penalty but the whole loss.
constexpr double kNormalizerMin = 1e-6;
// The trust region's size: below 1e-12 the band is narrower than float32 ratios resolve around 1
// (|r - 1| ~ sqrt(2 delta), 1e-8 at delta = 1e-16); above 1e6 it constrains nothing (the KL bounds are
// [0, 1/p] from delta ~ 750 on), and delta must stay a finite float32 for the float kernels.
constexpr double kDeltaMin = 1e-12;
constexpr double kDeltaMax = 1e6;
constexpr double kNormalizerMax = 1e18;
constexpr double kKlCoefMax = 1e6;

// The option structs, one field per row of tables.h, with its default.
#define BANDPO_OPTION_FIELD(name, ctype, schema_type, schema_default, cpp_default, ...) ctype name = cpp_default;
struct BoundOptions {
  BANDPO_BOUND_OPTION_TABLE(BANDPO_OPTION_FIELD)
};

struct LossOptions {
  BoundOptions bounds;
  BANDPO_LOSS_OPTION_TABLE(BANDPO_OPTION_FIELD)
};

// The lm_head chunk steps' options: the ignored target and the logits' transform (lm_head.h).
struct LogitOptions {
  BANDPO_LOGIT_OPTION_TABLE(BANDPO_OPTION_FIELD)
};
#undef BANDPO_OPTION_FIELD

// What the faces need to know of an option to read it from their callers (tables.h's columns).
struct OptionInfo {
  const char* name;
  const char* schema_type;  // "float", "float?", "bool", "str"
  bool optional() const {
    return schema_type[0] != '\0' && schema_type[std::char_traits<char>::length(schema_type) - 1] == '?';
  }
};

// Calls visit(const OptionInfo&, field&) for every option, in schema order: the faces (torch, numpy, C ABI)
// read and write options through this, never by listing them.
#define BANDPO_VISIT_OPTION(name, ctype, schema_type, ...) visit(OptionInfo{#name, schema_type}, o.name);
template <class Visit>
void for_each_option(BoundOptions& o, Visit&& visit) {
  BANDPO_BOUND_OPTION_TABLE(BANDPO_VISIT_OPTION)
}
template <class Visit>
void for_each_option(LossOptions& lo, Visit&& visit) {
  for_each_option(lo.bounds, visit);
  LossOptions& o = lo;
  BANDPO_LOSS_OPTION_TABLE(BANDPO_VISIT_OPTION)
}
template <class Visit>
void for_each_option(LogitOptions& o, Visit&& visit) {
  BANDPO_LOGIT_OPTION_TABLE(BANDPO_VISIT_OPTION)
}
#undef BANDPO_VISIT_OPTION

// An optional option as a face receives it: absent gives `absent` (the C++ default, a sentinel); a present
// NaN is refused naming the option (it would otherwise read as "absent" for normalizer).
inline double optional_option(const OptionInfo& info, bool present, double value, double absent) {
  if (!present) return absent;
  if (std::isnan(value)) throw std::invalid_argument(std::string(info.name) + " must be a number (or None); got nan");
  return value;
}

// Number of floats in the metrics vector of band_loss, and their order (tables.h).
enum Metric : int { BANDPO_METRIC_TABLE(BANDPO_ENUM_VALUE) kNumMetrics };

// Names <-> codes of the choice options; parse_* throw std::invalid_argument naming the option.
Divergence parse_divergence(const std::string& name);
Aggregation parse_aggregation(const std::string& name);
KlEstimator parse_kl_estimator(const std::string& name);
const char* divergence_name(Divergence d);
const char* aggregation_name(Aggregation a);
const char* kl_estimator_name(KlEstimator e);
// Overloads for generic code (for_each_option): parse(name, &field) and name_of(field).
inline void parse_choice(const std::string& s, Divergence& d) { d = parse_divergence(s); }
inline void parse_choice(const std::string& s, Aggregation& a) { a = parse_aggregation(s); }
inline void parse_choice(const std::string& s, KlEstimator& e) { e = parse_kl_estimator(s); }
inline const char* choice_name(Divergence d) { return divergence_name(d); }
inline const char* choice_name(Aggregation a) { return aggregation_name(a); }
inline const char* choice_name(KlEstimator e) { return kl_estimator_name(e); }

// The torch schema of the options (", str divergence=\"kl\", float delta=0.05, ..."), from tables.h.
std::string bound_options_schema();
std::string loss_options_schema();
std::string logit_options_schema();

// Throw std::invalid_argument naming the offending option.
void validate(const BoundOptions& options);
void validate(const LossOptions& options);
void validate(const LogitOptions& options);

template <class C>
BoundParams<C> to_params(const BoundOptions& o) {
  const C clip_lower = static_cast<C>(1.0 - o.eps_low);
  const C clip_upper = static_cast<C>(1.0 + o.eps_high);
  // dcpo_lower's log(4 eps_low) as head + tail: the tail is what rounding the double to C lost.
  const double log_four_eps_low = std::log(4.0 * o.eps_low);  // -inf for eps_low = 0
  const C log_head = static_cast<C>(log_four_eps_low);
  const C log_tail =
      std::isfinite(log_four_eps_low) ? static_cast<C>(log_four_eps_low - static_cast<double>(log_head)) : C(0);
  return BoundParams<C>{o.divergence,
                        static_cast<C>(o.delta),
                        clip_lower,
                        clip_upper,
                        o.relax_high_p ? clip_lower : C(INFINITY),
                        o.relax_high_p ? clip_upper : -C(INFINITY),
                        static_cast<C>(o.ratio_max),
                        log_head,
                        log_tail,
                        static_cast<C>(std::sqrt(4.0 * o.eps_high)),
                        KlTable{nullptr, KlTableLayout{}}};
}

template <class C>
LossParams<C> to_params(const LossOptions& o) {
  return LossParams<C>{to_params<C>(o.bounds), static_cast<C>(o.dual_clip), static_cast<C>(o.kl_coef), o.kl_estimator};
}

}  // namespace bandpo
