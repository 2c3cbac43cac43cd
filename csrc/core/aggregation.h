// Internal: the partial sums every backend reduces, and the aggregation of their totals into the loss and
// metrics. Written once (__host__ __device__) so that the CPU driver and the CUDA finishing kernel apply the
// same formulas to their (differently ordered, but each deterministic) sums.
#pragma once

#include <cmath>
#include <cstdint>

#include "bandpo/config.h"
#include "bandpo/inputs.h"
#include "bandpo/loss_result.h"
#include "bandpo/options.h"

namespace bandpo {
namespace detail {

// The fields of SegmentSums, listed once: BANDPO_FIELD(kind, name) with kind `sum` (a floating-point sum,
// double once widened) or `count` (int64_t). The CUDA warp reductions and per-lane accumulators expand the
// same list (cuda/common.cuh, cuda/loss_forward.cu).
//   loss: sum of w * (pg + kl_coef * kl);  pg: sum of w * pg;  weight: sum of w
//   clip_upper, clip_lower, dual: weighted counts;  ppo_kl, ratio, ref_kl: weighted sums
//   invalid: valid positions holding bad values (token_loss.h bad_token)
// One field a line, kept by hand: clang-format reflows such lists differently on each pass.
// clang-format off
#define BANDPO_SEGMENT_SUM_FIELDS(BANDPO_FIELD) \
  BANDPO_FIELD(sum, loss)                       \
  BANDPO_FIELD(sum, pg)                         \
  BANDPO_FIELD(sum, weight)                     \
  BANDPO_FIELD(sum, clip_upper)                 \
  BANDPO_FIELD(sum, clip_lower)                 \
  BANDPO_FIELD(sum, dual)                       \
  BANDPO_FIELD(sum, ppo_kl)                     \
  BANDPO_FIELD(sum, ratio)                      \
  BANDPO_FIELD(sum, ref_kl)                     \
  BANDPO_FIELD(count, invalid)
// clang-format on

// The member type of a field of kind `sum` or `count`, for a given floating-point sum type.
#define BANDPO_SEGMENT_FIELD_TYPE_sum(Sum) Sum
#define BANDPO_SEGMENT_FIELD_TYPE_count(Sum) int64_t

struct SegmentSums {
#define BANDPO_DECLARE(kind, name) BANDPO_SEGMENT_FIELD_TYPE_##kind(double) name = 0;
  BANDPO_SEGMENT_SUM_FIELDS(BANDPO_DECLARE)
#undef BANDPO_DECLARE

  BANDPO_HD void add(const SegmentSums& o) {
#define BANDPO_ADD(kind, name) name += o.name;
    BANDPO_SEGMENT_SUM_FIELDS(BANDPO_ADD)
#undef BANDPO_ADD
  }
};

BANDPO_HD double mean_or_zero(double sum, double weight) { return weight != 0.0 ? sum / weight : 0.0; }

// The denominator of the aggregation (see Aggregation) or the normalizer, given the batch shape and the
// total mask weight (token-mean only).
BANDPO_HD double aggregation_denominator(const LossOptions& options, int64_t rows, int64_t cols, double total_weight) {
  if (!(options.normalizer != options.normalizer)) return options.normalizer;  // set (not NaN)
  switch (options.agg) {
    case Aggregation::token_mean:
      return total_weight;
    case Aggregation::seq_mean_token_sum:
    case Aggregation::seq_mean_token_mean:
      return static_cast<double>(rows);
    case Aggregation::seq_mean_token_sum_norm:
      return static_cast<double>(rows) * static_cast<double>(cols);
  }
  return 0.0;
}

// The loss and metrics from the totals. sum_row_mean_loss / sum_row_mean_pg are the sums over rows of the
// per-row means (used by seq-mean-token-mean only). weight_exp: the totals' weights are the mask's times
// 2^-weight_exp (0 but for huge float64 mask weights, cpu_drivers.cpp): every mean over the weights is the same,
// a loss over another denominator is scaled back.
BANDPO_HD LossResult finish_loss(const SegmentSums& total, double sum_row_mean_loss, double sum_row_mean_pg,
                                 const LossOptions& options, int64_t rows, int64_t cols, int weight_exp = 0) {
  const double denominator = aggregation_denominator(options, rows, cols, total.weight);
  const bool row_means = options.agg == Aggregation::seq_mean_token_mean;
  const double loss_sum = row_means ? sum_row_mean_loss : total.loss;
  const double pg_sum = row_means ? sum_row_mean_pg : total.pg;
  // The sums are of scaled weights where the denominator is not their own total (nor a mean of per-row means).
  const bool over_weights =
      !row_means && options.normalizer != options.normalizer && options.agg == Aggregation::token_mean;
  const int unscale = row_means || over_weights ? 0 : weight_exp;
  LossResult result;
  result.loss = mean_or_zero(loss_sum, denominator);
  if (unscale != 0) result.loss = ldexp(result.loss, unscale);
  const double w = total.weight;
  result.metrics[kPgClipfrac] = static_cast<float>(mean_or_zero(total.clip_upper + total.clip_lower, w));
  result.metrics[kClipfracUpper] = static_cast<float>(mean_or_zero(total.clip_upper, w));
  result.metrics[kClipfracLower] = static_cast<float>(mean_or_zero(total.clip_lower, w));
  result.metrics[kDualClipfrac] = static_cast<float>(mean_or_zero(total.dual, w));
  result.metrics[kPpoKl] = static_cast<float>(mean_or_zero(total.ppo_kl, w));
  result.metrics[kRatioMean] = static_cast<float>(mean_or_zero(total.ratio, w));
  result.metrics[kRefKl] = static_cast<float>(mean_or_zero(total.ref_kl, w));
  const double pg_loss = mean_or_zero(pg_sum, denominator);
  result.metrics[kPgLoss] = static_cast<float>(unscale != 0 ? ldexp(pg_loss, unscale) : pg_loss);
  return result;
}

// Whether the backward's scale depends on the data: the total mask weight, summed before the gradient pass.
// token-mean without a normalizer divides by the total mask weight (unless there is no mask);
// seq-mean-token-mean additionally divides each row by its own mask weight.
BANDPO_HD bool backward_needs_total_weight(const LossOptions& options, MaskKind mask_kind) {
  return options.agg == Aggregation::token_mean && options.normalizer != options.normalizer &&
         mask_kind != MaskKind::none;
}

}  // namespace detail
}  // namespace bandpo
