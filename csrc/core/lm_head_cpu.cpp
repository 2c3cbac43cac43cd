// CPU drivers of the lm_head statistics (bandpo/cpu.h logit_stats_cpu, logit_grad_cpu): checks, then the rows
// on the thread pool, each row by the kernel variant's vectorised loops (logit_stats.h's per-element math).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "bandpo/cpu.h"
#include "bandpo/logit_stats.h"
#include "checks.h"
#include "cpu_dispatch.h"
#include "thread_pool.h"

namespace bandpo {
namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

LogitTransform checked_transform(const char* op, int64_t rows, int64_t vocab, int64_t row_stride, const void* raw,
                                 const int64_t* target, int64_t ignore_index, double logit_scale, double softcap,
                                 double temperature) {
  detail::check_logit_chunk(op, rows, vocab, row_stride, raw, target, logit_scale, softcap, temperature);
  for (int64_t r = 0; r < rows; ++r) {  // before any work: an index outside the row would read past it
    const int64_t t = target[r];
    if (t != ignore_index && (t < 0 || t >= vocab))
      fail(op, "target[" + std::to_string(r) + "] = " + std::to_string(t) + " is outside [0, " + std::to_string(vocab) +
                   ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
  }
  return make_logit_transform(logit_scale, softcap, temperature);
}

// Rows per work item: about 64k logits, so that items are neither tiny nor few.
int64_t rows_per_item(int64_t vocab) { return vocab >= 65536 ? 1 : 65536 / vocab; }

}  // namespace

void logit_stats_cpu(const float* raw, int64_t rows, int64_t vocab, int64_t row_stride, const int64_t* target,
                     int64_t ignore_index, double logit_scale, double softcap, double temperature, float* logp,
                     float* entropy, const ParallelFor& parallel_for) {
  const LogitTransform t = checked_transform("logit_stats_cpu", rows, vocab, row_stride, raw, target, ignore_index,
                                             logit_scale, softcap, temperature);
  if (rows > 0 && (!logp || !entropy)) fail("logit_stats_cpu", "logp and entropy must not be null when rows > 0");
  const detail::KernelTable& k = detail::cpu_kernels();
  const int64_t per = rows_per_item(vocab);
  detail::run_parallel(parallel_for, (rows + per - 1) / per, [&](int64_t b, int64_t e) {
    k.logit_stats(raw, row_stride, vocab, b * per, std::min(rows, e * per), target, ignore_index, t, logp, entropy);
  });
}

void logit_grad_cpu(float* raw, int64_t rows, int64_t vocab, int64_t row_stride, const int64_t* target,
                    int64_t ignore_index, double logit_scale, double softcap, double temperature,
                    const float* grad_logp, const float* grad_entropy, const float* logp, const float* entropy,
                    const ParallelFor& parallel_for) {
  const LogitTransform t = checked_transform("logit_grad_cpu", rows, vocab, row_stride, raw, target, ignore_index,
                                             logit_scale, softcap, temperature);
  detail::check_logit_outputs("logit_grad_cpu", logp, entropy);
  const detail::KernelTable& k = detail::cpu_kernels();
  const int64_t per = rows_per_item(vocab);
  detail::run_parallel(parallel_for, (rows + per - 1) / per, [&](int64_t b, int64_t e) {
    k.logit_grad(raw, row_stride, vocab, b * per, std::min(rows, e * per), target, ignore_index, t, grad_logp,
                 grad_entropy, logp, entropy);
  });
}

}  // namespace bandpo
