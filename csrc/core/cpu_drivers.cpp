// CPU drivers of the core library (bandpo/cpu.h): validation, the fixed item partition (partition.h), the
// items on threads (thread_pool.h), the kernel variant (cpu_dispatch.h), deterministic reduction and the
// aggregation (aggregation.h).
#include "bandpo/cpu.h"
#include "bandpo/version.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "bad_values.h"
#include "checks.h"
#include "cpu_dispatch.h"
#include "kl_table_cache.h"
#include "partition.h"
#include "thread_pool.h"

namespace bandpo {

using detail::ItemSums;
using detail::KernelTable;
using detail::Partition;
using detail::run_parallel;
using detail::SegmentSums;

const char* version() { return BANDPO_VERSION_STRING; }

namespace {

// The float KL table of a call that reads one ("kl" with a float compute type), else null; the caller
// holds it for the call.
std::shared_ptr<const detail::KlTableData> kl_table_of_call(DType dtype, const BoundOptions& options,
                                                            const ParallelFor& parallel_for) {
  if (options.divergence != Divergence::kl || dtype == DType::float64) return nullptr;
  return detail::kl_table_for(options.delta, parallel_for);
}

// A loss call's: none where the caller gave the bounds.
std::shared_ptr<const detail::KlTableData> kl_table_of_call(const LossInputs& in, const BoundOptions& options,
                                                            const ParallelFor& parallel_for) {
  return in.has_given_bounds() ? nullptr : kl_table_of_call(in.dtype, options, parallel_for);
}

}  // namespace

void band_bounds_cpu(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower,
                     void* upper, const ParallelFor& parallel_for) {
  detail::check_bounds_call(dtype, old_logp, n, options, lower, upper, "band_bounds");
  if (n == 0) return;
  const KernelTable& k = detail::cpu_kernels();
  const auto table = kl_table_of_call(dtype, options, parallel_for);
  const KlTable view = detail::kl_table_view(table.get());
  const int64_t n_items = (n + kItemTokens - 1) / kItemTokens;
  run_parallel(parallel_for, n_items, [&](int64_t b, int64_t e) {
    k.bounds(dtype, old_logp, b * kItemTokens, std::min(n, e * kItemTokens), options, view, lower, upper);
  });
}

namespace {

// The power-of-two exponent k by which float64 mask weights are scaled down (w * 2^-k) so that the forward's
// weighted sums cannot overflow where the means they give fit: the largest weight then lies below 1 and each
// product w x below |x|. 0 (no scaling, bit for bit the plain sums) unless a weight exceeds 1; a power of two
// changes no rounding, so the means come out the same either way. float32 and narrower compute in float and
// sum in double, where no weight of theirs can overflow a product.
int loss_weight_exponent(const LossInputs& in) {
  if (in.dtype != DType::float64 || in.mask_kind != MaskKind::values || in.mask == nullptr) return 0;
  const double* w = static_cast<const double*>(in.mask);
  const int64_t n = in.rows * in.cols;
  double largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::fabs(w[i]) > largest ? std::fabs(w[i]) : largest;  // NaN never wins
  if (!(largest > 1.0) || !std::isfinite(largest)) return 0;  // an inf weight is refused as a bad value
  int exponent = 0;
  std::frexp(largest, &exponent);  // largest = m 2^exponent, m in [0.5, 1)
  return exponent;
}

}  // namespace

LossResult band_loss_forward_cpu(const LossInputs& in, const LossOptions& options, const ParallelFor& parallel_for) {
  detail::check_loss_call(in, options, "band_loss");
  const int weight_exp = loss_weight_exponent(in);
  const double weight_scale = std::ldexp(1.0, -weight_exp);
  const KernelTable& k = detail::cpu_kernels();
  const Partition part(in.rows, in.cols);
  std::vector<ItemSums> items = detail::host_workspace<ItemSums>(part.n_items, in, "band_loss");
  const auto table = part.n_items > 0 ? kl_table_of_call(in, options.bounds, parallel_for) : nullptr;
  const KlTable view = detail::kl_table_view(table.get());
  run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      ItemSums& acc = items[static_cast<size_t>(item)];
      part.for_each_segment(item, [&](int64_t row, int64_t begin, int64_t end) {
        const SegmentSums s = k.loss_segment(in, options, view, row, begin, end, weight_scale);
        acc.tokens.add(s);
        if (part.whole_rows()) {
          acc.row_mean_loss += detail::mean_or_zero(s.loss, s.weight);
          acc.row_mean_pg += detail::mean_or_zero(s.pg, s.weight);
        }
      });
    }
  });

  // Combine in item order: the same additions in the same order for any thread count.
  SegmentSums total;
  double row_mean_loss = 0, row_mean_pg = 0;
  SegmentSums row;  // running sums of the row being assembled from chunks
  for (int64_t item = 0; item < part.n_items; ++item) {
    const ItemSums& it = items[static_cast<size_t>(item)];
    if (it.tokens.invalid > 0)
      part.for_each_segment(
          item, [&](int64_t, int64_t begin, int64_t end) { detail::throw_if_bad_value(in, options, begin, end); });
    total.add(it.tokens);
    if (part.whole_rows()) {
      row_mean_loss += it.row_mean_loss;
      row_mean_pg += it.row_mean_pg;
    } else {
      row.add(it.tokens);
      if ((item + 1) % part.chunks_per_row == 0) {
        row_mean_loss += detail::mean_or_zero(row.loss, row.weight);
        row_mean_pg += detail::mean_or_zero(row.pg, row.weight);
        row = SegmentSums();
      }
    }
  }

  return detail::finish_loss(total, row_mean_loss, row_mean_pg, options, in.rows, in.cols, weight_exp);
}

void band_loss_backward_cpu(const LossInputs& in, const LossOptions& options, double grad_loss, void* grad_logp,
                            const ParallelFor& parallel_for) {
  const int64_t n = detail::check_loss_call(in, options, "band_loss backward");
  const KernelTable& k = detail::cpu_kernels();
  const Partition part(in.rows, in.cols);
  if (n == 0) return;
  if (!grad_logp) throw std::invalid_argument("band_loss backward: grad_logp must not be null when rows * cols > 0");
  // Per-token weight of the gradient for the token-sum modes; per row for seq-mean-token-mean.
  double total_weight = static_cast<double>(n);
  if (detail::backward_needs_total_weight(options, in.mask_kind)) {
    std::vector<double> partial = detail::host_workspace<double>(part.n_items, in, "band_loss backward");
    run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item)
        part.for_each_segment(item, [&](int64_t, int64_t begin, int64_t end) {
          partial[static_cast<size_t>(item)] += k.weight_sum(in, begin, end);
        });
    });
    total_weight = 0;
    for (double p : partial) total_weight += p;
  }
  const double denominator = detail::aggregation_denominator(options, in.rows, in.cols, total_weight);
  const double token_scale = denominator != 0.0 ? grad_loss / denominator : 0.0;
  const bool per_row_mean = options.agg == Aggregation::seq_mean_token_mean;

  const auto table = kl_table_of_call(in, options.bounds, parallel_for);
  const KlTable view = detail::kl_table_view(table.get());

  // Rows longer than an item need their total weight before any of their chunks can be scaled.
  std::vector<double> row_weight;
  if (per_row_mean && !part.whole_rows()) {
    std::vector<double> chunk_weight = detail::host_workspace<double>(part.n_items, in, "band_loss backward");
    run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item)
        part.for_each_segment(item, [&](int64_t, int64_t begin, int64_t end) {
          chunk_weight[static_cast<size_t>(item)] = k.weight_sum(in, begin, end);
        });
    });
    row_weight = detail::host_workspace<double>(in.rows, in, "band_loss backward");
    for (int64_t item = 0; item < part.n_items; ++item)
      row_weight[static_cast<size_t>(item / part.chunks_per_row)] += chunk_weight[static_cast<size_t>(item)];
  }

  run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      part.for_each_segment(item, [&](int64_t row, int64_t begin, int64_t end) {
        double scale = token_scale;
        if (per_row_mean) {
          const double w = part.whole_rows() ? k.weight_sum(in, begin, end) : row_weight[static_cast<size_t>(row)];
          scale = w != 0.0 ? token_scale / w : 0.0;
        }
        k.grad_segment(in, options, view, row, begin, end, scale, grad_logp);
      });
    }
  });
}

LossResult band_loss_cpu(const LossInputs& inputs, const LossOptions& options, void* grad_logp,
                         const ParallelFor& parallel_for) {
  const LossResult result = band_loss_forward_cpu(inputs, options, parallel_for);
  if (grad_logp) band_loss_backward_cpu(inputs, options, 1.0, grad_logp, parallel_for);
  return result;
}

}  // namespace bandpo
