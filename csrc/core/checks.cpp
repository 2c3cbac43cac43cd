#include "checks.h"

#include <cmath>
#include <cstddef>
#include <limits>

namespace bandpo {
namespace detail {
namespace {

[[noreturn]] void fail(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string(op) + ": " + message);
}

}  // namespace

int64_t element_bytes(DType dtype, const char* op) {
  switch (dtype) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::bfloat16:
    case DType::float16: return 2;
  }
  fail(op, "dtype = " + std::to_string(static_cast<int>(dtype)) + " is not a valid dtype code");
}

int64_t checked_numel(int64_t rows, int64_t cols, DType dtype, const char* op) {
  if (rows < 0 || cols < 0)
    fail(op, "rows = " + std::to_string(rows) + " and cols = " + std::to_string(cols) + " must be >= 0");
  const int64_t bytes = element_bytes(dtype, op);
  constexpr int64_t kMaxBytes = std::numeric_limits<std::ptrdiff_t>::max();
  // rows * cols * bytes <= kMaxBytes, tested by division so that nothing can wrap.
  if (rows > 0 && cols > kMaxBytes / bytes / rows)
    fail(op, "rows = " + std::to_string(rows) + " times cols = " + std::to_string(cols) + " elements of " +
                 std::to_string(bytes) + " bytes is more than one buffer can hold (" + std::to_string(kMaxBytes) +
                 " bytes)");
  return rows * cols;
}

void check_bounds_call(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options,
                       const void* lower, const void* upper, const char* op) {
  validate(options);
  if (n < 0) fail(op, "n = " + std::to_string(n) + " must be >= 0");
  checked_numel(1, n, dtype, op);
  if (n > 0 && (!old_logp || !lower || !upper)) fail(op, "old_logp, lower and upper must not be null when n > 0");
}

int64_t check_loss_call(const LossInputs& in, const LossOptions& options, const char* op) {
  validate(options);
  const int64_t n = checked_numel(in.rows, in.cols, in.dtype, op);
  const int mask_kind = static_cast<int>(in.mask_kind);
  if (mask_kind < 0 || mask_kind > static_cast<int>(MaskKind::values))
    fail(op, "mask_kind = " + std::to_string(mask_kind) + " is not a valid mask kind");
  if (n > 0 && (!in.logp || !in.old_logp || !in.advantages))
    fail(op, "logp, old_logp and advantages must not be null when rows * cols > 0");
  if (n > 0 && in.mask_kind != MaskKind::none && !in.mask) fail(op, "mask is null but mask_kind is not none");
  if (options.kl_coef != 0.0 && !in.ref_logp) fail(op, "kl_coef != 0 needs ref_logp");
  return n;
}

void check_logit_chunk(const char* op, int64_t rows, int64_t vocab, int64_t row_stride, const void* raw,
                       const int64_t* target, double logit_scale, double softcap, double temperature) {
  const std::string o(op);
  if (rows < 0) throw std::invalid_argument(o + ": rows = " + std::to_string(rows) + " must be >= 0");
  if (vocab < 1) throw std::invalid_argument(o + ": vocab = " + std::to_string(vocab) + " must be >= 1");
  if (row_stride < vocab)
    throw std::invalid_argument(o + ": row_stride = " + std::to_string(row_stride) + " must be >= vocab (" +
                                std::to_string(vocab) + ")");
  constexpr int64_t kMaxBytes = std::numeric_limits<std::ptrdiff_t>::max();
  if (rows > 0 && row_stride > kMaxBytes / 4 / rows)  // raw's extent, so that every offset r * row_stride fits
    throw std::invalid_argument(o + ": rows = " + std::to_string(rows) + " times row_stride = " +
                                std::to_string(row_stride) + " float32 logits is more than one buffer can hold (" +
                                std::to_string(kMaxBytes) + " bytes)");
  if (rows > 0 && (!raw || !target)) throw std::invalid_argument(o + ": raw and target must not be null when rows > 0");
  if (!(std::isfinite(temperature) && temperature > 0))
    throw std::invalid_argument(o + ": temperature must be a finite number > 0, got " + std::to_string(temperature));
  if (!(std::isfinite(softcap) && softcap >= 0))
    throw std::invalid_argument(o + ": softcap must be a finite number >= 0 (0: none), got " + std::to_string(softcap));
  if (!(std::isfinite(logit_scale) && logit_scale != 0))
    throw std::invalid_argument(o + ": logit_scale must be a finite nonzero number, got " + std::to_string(logit_scale));
}

void check_logit_outputs(const char* op, const float* logp, const float* entropy) {
  if ((logp == nullptr) != (entropy == nullptr))
    throw std::invalid_argument(std::string(op) + ": logp and entropy come together (the rows' logit_stats outputs), got only " +
                                (logp ? "logp" : "entropy"));
}

}  // namespace detail
}  // namespace bandpo
