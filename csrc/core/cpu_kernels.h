// Internal: the per-instruction-set CPU kernels (cpu_kernels.inc compiled once per ISA) and their table.
// cpu_drivers.cpp (with partition.h, thread_pool.cpp, bad_values.cpp) owns partitioning, threads, reductions and errors; the kernels own only the hot loops over one
// contiguous segment of at most kItemTokens tokens.
#pragma once

#include <cstdint>

#include "aggregation.h"
#include "bandpo/cpu.h"

namespace bandpo {
namespace detail {

struct KernelTable {
  const char* isa;
  void (*bounds)(DType dtype, const void* old_logp, int64_t begin, int64_t end, const BoundOptions& options,
                 void* lower, void* upper);
  // Tokens [begin, end) of row `row` (flat indices); ref_logp may be null (then kl terms are 0).
  SegmentSums (*loss_segment)(const LossInputs& in, const LossOptions& options, int64_t row, int64_t begin,
                              int64_t end);
  // grad[i] = scale * w_i * d(pg_i + kl_coef kl_i)/dlogp_i for i in [begin, end).
  void (*grad_segment)(const LossInputs& in, const LossOptions& options, int64_t row, int64_t begin, int64_t end,
                       double scale, void* grad);
  double (*weight_sum)(const LossInputs& in, int64_t begin, int64_t end);
};

const KernelTable& kernel_table_baseline();
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_avx512();
#endif

}  // namespace detail
}  // namespace bandpo
