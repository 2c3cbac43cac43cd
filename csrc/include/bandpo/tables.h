// The single definition of every option, choice and metric of band_bounds / band_loss (X-macro tables).
//
// Everything else is generated from these rows: the C++ option structs and their defaults (options.h), the
// enums and their names, the torch schema strings and the unboxing of the torch ops' arguments (csrc/torch),
// the C ABI's option structs (bandpo.h: checked against these rows at compile time, c_api.cpp) and its
// tables, through which the Python side reads the rows (bandpo/_tables.py calls bandpo_table_get), so that
// BandConfig, bandpo.reference, the lm_head, the fake kernels and the numpy face share these defaults and
// these checks. Adding an option: one row here, the math that uses it, the C struct field in bandpo.h and,
// if users set it through BandConfig, nothing else (BandConfig reads the rows).
//
// Format (no comments inside the macro bodies):
//   BANDPO_OPTION(name, C++ type, schema type, schema default, C++ default, scope, valid, requirement)
//     scope: config = a field of BandConfig; call = passed per call (band_loss(..., normalizer=...)).
//     The schema default is the torch schema literal (also a Python literal); the C++ default is the same
//     value in the C++ type (tests/test_tables.py checks the two agree, row by row).
//     valid: a C++ condition on the value `v` (choices are checked when parsed); requirement: the words of
//     the error when it fails ("delta must be a finite number > 0; got -1"). validate() is these rows.
//   BANDPO_CHOICE(enum value, name, C ABI enum constant of bandpo.h)
//   BANDPO_METRIC(enum value, name)
//   BANDPO_CONSTANT(C++ name, Python name, value): constants of the per-token math (bounds.h, token_loss.h)
//     that the Python side applies too (bandpo.rules, bandpo.reference)
#pragma once

// Log-probabilities a hair above 0 (rounding in log_softmax) count as 0; clearly positive ones are refused.
// The ratio's log is clamped to +-kLogRatioClamp; the k3 KL estimate takes its log-ratio clamped to
// +-kKlLogRatioClamp and is itself clamped to +-kKlEstimateClamp (verl's low_var_kl).
#define BANDPO_CONSTANT_TABLE(BANDPO_CONSTANT)                 \
  BANDPO_CONSTANT(kLogProbTolerance, LOG_PROB_TOLERANCE, 1e-6) \
  BANDPO_CONSTANT(kLogRatioClamp, LOG_RATIO_CLAMP, 20.0)       \
  BANDPO_CONSTANT(kKlLogRatioClamp, KL_LOG_RATIO_CLAMP, 20.0)  \
  BANDPO_CONSTANT(kKlEstimateClamp, KL_ESTIMATE_CLAMP, 10.0)

#define BANDPO_DIVERGENCE_TABLE(BANDPO_CHOICE) \
  BANDPO_CHOICE(kl, "kl", BANDPO_KL)           \
  BANDPO_CHOICE(tv, "tv", BANDPO_TV)           \
  BANDPO_CHOICE(chi2, "chi2", BANDPO_CHI2)     \
  BANDPO_CHOICE(clip, "clip", BANDPO_CLIP)     \
  BANDPO_CHOICE(dcpo, "dcpo", BANDPO_DCPO)

#define BANDPO_AGGREGATION_TABLE(BANDPO_CHOICE)                                         \
  BANDPO_CHOICE(token_mean, "token-mean", BANDPO_TOKEN_MEAN)                            \
  BANDPO_CHOICE(seq_mean_token_sum, "seq-mean-token-sum", BANDPO_SEQ_MEAN_TOKEN_SUM)    \
  BANDPO_CHOICE(seq_mean_token_mean, "seq-mean-token-mean", BANDPO_SEQ_MEAN_TOKEN_MEAN) \
  BANDPO_CHOICE(seq_mean_token_sum_norm, "seq-mean-token-sum-norm", BANDPO_SEQ_MEAN_TOKEN_SUM_NORM)

#define BANDPO_KL_ESTIMATOR_TABLE(BANDPO_CHOICE) \
  BANDPO_CHOICE(k1, "k1", BANDPO_K1)             \
  BANDPO_CHOICE(k2, "k2", BANDPO_K2)             \
  BANDPO_CHOICE(k3, "k3", BANDPO_K3)

// Options of band_bounds (and the first options of band_loss), in schema order.
#define BANDPO_BOUND_OPTION_TABLE(BANDPO_OPTION)                                                                       \
  BANDPO_OPTION(divergence, Divergence, "str", "\"kl\"", Divergence::kl, config, true, "")                             \
  BANDPO_OPTION(delta, double, "float", "0.05", 0.05, config, v >= kDeltaMin && v <= kDeltaMax, "in [1e-12, 1e+06]")   \
  BANDPO_OPTION(eps_low, double, "float", "0.2", 0.2, config, v >= 0.0 && v <= 1.0, "in [0, 1]")                       \
  BANDPO_OPTION(eps_high, double, "float", "0.28", 0.28, config, v >= 0.0 && std::isfinite(v), "a finite number >= 0") \
  BANDPO_OPTION(relax_high_p, bool, "bool", "False", false, config, true, "")                                          \
  BANDPO_OPTION(ratio_max, double, "float", "10.0", 10.0, config, v >= 1.0, ">= 1 (inf allowed)")

// The further options of band_loss, in schema order. An absent optional is a sentinel in C++: dual_clip
// +inf (off), normalizer NaN (the aggregation's own denominator). The ranges of normalizer and kl_coef
// (options.h) keep the loss and its gradient representable: each scales every token's term.
#define BANDPO_LOSS_OPTION_TABLE(BANDPO_OPTION)                                                                       \
  BANDPO_OPTION(dual_clip, double, "float?", "None", kOffInfinity, config, v > 1.0, "> 1 (or None to turn it off)")   \
  BANDPO_OPTION(agg, Aggregation, "str", "\"token-mean\"", Aggregation::token_mean, config, true, "")                 \
  BANDPO_OPTION(normalizer, double, "float?", "None", kUnsetNaN, call,                                                \
                std::isnan(v) || (v >= kNormalizerMin && v <= kNormalizerMax), "a count in [1e-06, 1e+18] (or None)") \
  BANDPO_OPTION(kl_coef, double, "float", "0.0", 0.0, config, std::fabs(v) <= kKlCoefMax, "in [-1e+06, 1e+06]")       \
  BANDPO_OPTION(kl_estimator, KlEstimator, "str", "\"k3\"", KlEstimator::k3, config, true, "")

// Options of the lm_head's chunk steps (logit_chunk_stats / logit_chunk_grad_, linear_logprob_entropy, the C ABI's
// bandpo_logit_stats / bandpo_logit_grad), in schema order: the target that marks a position without a token, and
// the transform of the raw logits, z = (logit_scale raw, then softcap tanh(. / softcap) when softcap > 0) /
// temperature (lm_head.h).
#define BANDPO_LOGIT_OPTION_TABLE(BANDPO_OPTION)                                              \
  BANDPO_OPTION(ignore_index, int64_t, "int", "-100", -100, call, true, "")                   \
  BANDPO_OPTION(logit_scale, double, "float", "1.0", 1.0, call, std::isfinite(v) && v != 0.0, \
                "a finite nonzero number")                                                    \
  BANDPO_OPTION(softcap, double, "float", "0.0", 0.0, call, std::isfinite(v) && v >= 0.0,     \
                "a finite number >= 0 (0: none)")                                             \
  BANDPO_OPTION(temperature, double, "float", "1.0", 1.0, call, std::isfinite(v) && v > 0.0, "a finite number > 0")

// The metrics of band_loss, in the order of its metrics vector.
//   pg_clipfrac:    valid tokens whose clipped loss exceeds the unclipped (verl's pg_clipfrac)
//   clipfrac_upper: A > 0 and r above the upper bound;  clipfrac_lower: A < 0 and r below the lower bound
//   dual_clipfrac:  A < 0 and held at -A c by dual-clip (verl's pg_clipfrac_lower)
//   ppo_kl:         mean of old_logp - logp (verl's ppo_kl);  ratio_mean: mean r (after the log-ratio clamp)
//   ref_kl:         mean of the KL estimator to ref_logp (0 without ref_logp)
//   pg_loss:        the policy-gradient part of the loss, aggregated like the loss
#define BANDPO_METRIC_TABLE(BANDPO_METRIC)        \
  BANDPO_METRIC(kPgClipfrac, "pg_clipfrac")       \
  BANDPO_METRIC(kClipfracUpper, "clipfrac_upper") \
  BANDPO_METRIC(kClipfracLower, "clipfrac_lower") \
  BANDPO_METRIC(kDualClipfrac, "dual_clipfrac")   \
  BANDPO_METRIC(kPpoKl, "ppo_kl")                 \
  BANDPO_METRIC(kRatioMean, "ratio_mean")         \
  BANDPO_METRIC(kRefKl, "ref_kl")                 \
  BANDPO_METRIC(kPgLoss, "pg_loss")

// Helpers to expand the choice and metric tables.
#define BANDPO_ENUM_VALUE(value, ...) value,
#define BANDPO_COUNT_ROW(...) +1
