// CPU drivers of the lm_head statistics (bandpo/cpu.h logit_stats_cpu, logit_grad_cpu): checks, then the rows
// on the thread pool, each row by the kernel variant's vectorised loops (lm_head.h's per-element math).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "bandpo/cpu.h"
#include "bandpo/lm_head.h"
#include "checks.h"
#include "cpu_dispatch.h"
#include "thread_pool.h"

namespace bandpo {
namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

LogitTransform checked_transform(const char* op, const void* raw, const LogitChunk& c, const LogitOptions& o) {
  detail::check_logit_chunk(op, raw, c, o);
  for (int64_t r = 0; r < c.rows; ++r) {  // before any work: an index outside the row would read past it
    const int64_t t = c.target[r];
    if (t != o.ignore_index && (t < 0 || t >= c.vocab))
      fail(op, "target[" + std::to_string(r) + "] = " + std::to_string(t) + " is outside [0, " +
                   std::to_string(c.vocab) + ") and is not ignore_index (" + std::to_string(o.ignore_index) + ")");
  }
  return make_logit_transform(o.logit_scale, o.softcap, o.temperature);
}

// Rows per work item: about 64k logits, so that items are neither tiny nor few.
int64_t rows_per_item(int64_t vocab) { return vocab >= 65536 ? 1 : 65536 / vocab; }

}  // namespace

void logit_stats_cpu(const float* raw, const LogitChunk& chunk, const LogitOptions& options, float* logp,
                     float* entropy, const ParallelFor& parallel_for) {
  const LogitTransform t = checked_transform("logit_stats_cpu", raw, chunk, options);
  if (chunk.rows > 0 && (!logp || !entropy)) fail("logit_stats_cpu", "logp and entropy must not be null when rows > 0");
  const detail::KernelTable& k = detail::cpu_kernels();
  const int64_t rows = chunk.rows, per = rows_per_item(chunk.vocab);
  detail::run_parallel(parallel_for, (rows + per - 1) / per, [&](int64_t b, int64_t e) {
    k.logit_stats(raw, chunk, options.ignore_index, t, detail::RowRange{b * per, std::min(rows, e * per)}, logp,
                  entropy);
  });
}

void logit_grad_cpu(float* raw, const LogitChunk& chunk, const LogitOptions& options, const LogitRowGrads& grads,
                    const ParallelFor& parallel_for) {
  const LogitTransform t = checked_transform("logit_grad_cpu", raw, chunk, options);
  detail::check_logit_outputs("logit_grad_cpu", grads.logp, grads.entropy);
  const detail::KernelTable& k = detail::cpu_kernels();
  const int64_t rows = chunk.rows, per = rows_per_item(chunk.vocab);
  detail::run_parallel(parallel_for, (rows + per - 1) / per, [&](int64_t b, int64_t e) {
    k.logit_grad(raw, chunk, options.ignore_index, t, detail::RowRange{b * per, std::min(rows, e * per)}, grads);
  });
}

}  // namespace bandpo
