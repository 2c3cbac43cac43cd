// Internal: the per-instruction-set CPU kernels (the cpu_kernels_*.inc parts, each compiled once per ISA) and
// their table.
// cpu_drivers.cpp (with partition.h, thread_pool.cpp, bad_values.cpp) owns partitioning, threads, reductions and errors; the kernels own only the hot loops over one
// contiguous segment of at most kItemTokens tokens.
#pragma once

#include <cstdint>

#include "aggregation.h"
#include "bandpo/cpu.h"
#include "bandpo/kl_table_build.h"
#include "bandpo/lm_head.h"

namespace bandpo {
namespace detail {

// The hot loops' signatures, once: each instruction set's functions are declared with these types (below) and
// defined in the cpu_kernels_*.inc parts, compiled once per instruction set.
// `kl_table`: the float Band-KL table for the call's delta (kl_table.h), or coeffs == nullptr to solve; read
// only by "kl" with a float compute type.
using BoundsKernel = void(DType dtype, const void* old_logp, int64_t begin, int64_t end, const BoundOptions& options,
                          const KlTable& kl_table, void* lower, void* upper);
// Tokens [begin, end) of row `row` (flat indices); ref_logp may be null (then kl terms are 0). The weighted sums
// are of w * weight_scale (a power of two, 1 but for huge mask weights: loss_weight_scale in cpu_drivers.cpp).
using LossSegmentKernel = SegmentSums(const LossInputs& in, const LossOptions& options, const KlTable& kl_table,
                                      int64_t row, int64_t begin, int64_t end, double weight_scale);
// grad[i] = scale * w_i * d(pg_i + kl_coef kl_i)/dlogp_i for i in [begin, end).
using GradSegmentKernel = void(const LossInputs& in, const LossOptions& options, const KlTable& kl_table, int64_t row,
                               int64_t begin, int64_t end, double scale, void* grad);
using WeightSumKernel = double(const LossInputs& in, int64_t begin, int64_t end);
// values[i] = kl_table_exact(lp[i], delta) (kl_table_build.h) for i in [0, n): the table builder's solves.
using KlTableExactKernel = void(const double* lp, int64_t n, double delta, KlTableValues* values);
// Rows [range.begin, range.end) of a chunk of raw logits (inputs.h LogitChunk; lm_head.h): logp[r] and
// entropy[r]; targets already checked (in [0, vocab) or ignore_index).
struct RowRange {
  int64_t begin, end;
};
using LogitStatsKernel = void(const float* raw, const LogitChunk& chunk, int64_t ignore_index, const LogitTransform& t,
                              RowRange range, float* logp, float* entropy);
// The same rows overwritten with d loss / d raw (LogitRowGrads: grad_logp / grad_entropy may be null: 0; with
// logp and entropy, the rows' logit_stats outputs, the row's sums come from them: one pass, not three).
using LogitGradKernel = void(float* raw, const LogitChunk& chunk, int64_t ignore_index, const LogitTransform& t,
                             RowRange range, const LogitRowGrads& grads);

// One instruction set's kernels (cpu_dispatch.cpp picks the table).
struct KernelTable {
  const char* isa;
  BoundsKernel* bounds;
  LossSegmentKernel* loss_segment;
  GradSegmentKernel* grad_segment;
  WeightSumKernel* weight_sum;
  KlTableExactKernel* kl_table_exact;
  LogitStatsKernel* logit_stats;
  LogitGradKernel* logit_grad;
};

// Each instruction set's functions live in their own namespace (cpu_baseline, cpu_avx2, cpu_avx512): the same
// source compiled with different flags must never give two definitions of one name (the linker would keep
// either, and an AVX-512 loop could end up in the baseline table).
#define BANDPO_DECLARE_CPU_KERNELS(ns) \
  namespace ns {                       \
  BoundsKernel bounds;                 \
  LossSegmentKernel loss_segment;      \
  GradSegmentKernel grad_segment;      \
  WeightSumKernel weight_sum;          \
  KlTableExactKernel kl_table_exact;   \
  LogitStatsKernel logit_stats;        \
  LogitGradKernel logit_grad;          \
  }
BANDPO_DECLARE_CPU_KERNELS(cpu_baseline)
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
BANDPO_DECLARE_CPU_KERNELS(cpu_avx2)
BANDPO_DECLARE_CPU_KERNELS(cpu_avx512)
#endif
#undef BANDPO_DECLARE_CPU_KERNELS

}  // namespace detail
}  // namespace bandpo
