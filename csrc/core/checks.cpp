#include "checks.h"

#include <cmath>
#include <cstddef>
#include <limits>
#include <sstream>

#include "bandpo/arrays.h"

namespace bandpo {
namespace detail {
namespace {

[[noreturn]] void fail(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string(op) + ": " + message);
}

}  // namespace

int64_t element_bytes(DType dtype, const char* op) {
  switch (dtype) {
    case DType::float32:
      return 4;
    case DType::float64:
      return 8;
    case DType::bfloat16:
    case DType::float16:
      return 2;
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

void check_bounds_call(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, const void* lower,
                       const void* upper, const char* op) {
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
  if (options.kl_coef != 0.0 && !in.ref_logp) fail(op, kl_coef_needs_ref_message(options.kl_coef));
  if (n > 0 && (in.lower == nullptr) != (in.upper == nullptr)) fail(op, bounds_come_together_message(in.lower));
  return n;
}

void check_logit_chunk(const char* op, const void* raw, const LogitChunk& c, const LogitOptions& options) {
  const std::string o(op);
  if (c.rows < 0) throw std::invalid_argument(o + ": rows = " + std::to_string(c.rows) + " must be >= 0");
  if (c.vocab < 1) throw std::invalid_argument(o + ": vocab = " + std::to_string(c.vocab) + " must be >= 1");
  if (c.row_stride < c.vocab)
    throw std::invalid_argument(o + ": row_stride = " + std::to_string(c.row_stride) + " must be >= vocab (" +
                                std::to_string(c.vocab) + ")");
  constexpr int64_t kMaxBytes = std::numeric_limits<std::ptrdiff_t>::max();
  if (c.rows > 0 && c.row_stride > kMaxBytes / 4 / c.rows)  // raw's extent, so that every offset r * row_stride fits
    throw std::invalid_argument(
        o + ": rows = " + std::to_string(c.rows) + " times row_stride = " + std::to_string(c.row_stride) +
        " float32 logits is more than one buffer can hold (" + std::to_string(kMaxBytes) + " bytes)");
  if (c.rows > 0 && (!raw || !c.target))
    throw std::invalid_argument(o + ": raw and target must not be null when rows > 0");
  try {
    validate(options);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(o + ": " + e.what());
  }
}

void check_logit_outputs(const char* op, const float* logp, const float* entropy) {
  if ((logp == nullptr) != (entropy == nullptr))
    throw std::invalid_argument(std::string(op) +
                                ": logp and entropy come together (the rows' logit_stats outputs), got only " +
                                (logp ? "logp" : "entropy"));
}

}  // namespace detail

// ---- the argument rules of band_loss over arrays (bandpo/arrays.h) -------------------------------------

const char* element_type_name(ElementType type) {
  switch (type) {
    case ElementType::float32:
      return "float32";
    case ElementType::float64:
      return "float64";
    case ElementType::bfloat16:
      return "bfloat16";
    case ElementType::float16:
      return "float16";
    case ElementType::boolean:
      return "bool";
    case ElementType::uint8:
      return "uint8";
    case ElementType::int64:
      return "int64";
    case ElementType::other:
      break;
  }
  return "an unsupported dtype";
}

std::string shape_string(const int64_t* shape, int ndim) {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string bounds_come_together_message(bool lower_given) {
  return std::string("lower and upper come together (the bounds of every token); got only ") +
         (lower_given ? "lower" : "upper");
}

std::string kl_coef_needs_ref_message(double kl_coef) {
  std::ostringstream s;
  s << "kl_coef = " << kl_coef << " needs ref_logp (the reference policy's log-probabilities)";
  return s.str();
}

namespace {

const char* const kArgNames[kLossArgs] = {"logp", "old_logp", "advantages", "mask", "ref_logp", "lower", "upper"};

std::string type_name(const ArrayDesc& a) {
  return a.type == ElementType::other && a.type_name ? std::string(a.type_name) : element_type_name(a.type);
}

bool is_float(ElementType t) { return static_cast<int>(t) >= 0 && static_cast<int>(t) <= 3; }
bool is_half(ElementType t) { return t == ElementType::bfloat16 || t == ElementType::float16; }

std::string shape_of(const ArrayDesc& a) { return shape_string(a.shape, a.ndim); }

bool same_shape(const ArrayDesc& a, const ArrayDesc& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

}  // namespace

// A described array's own sanity: ndim >= 0, sizes >= 0 and a shape pointer where ndim > 0; its element count
// without overflow (at most PTRDIFF_MAX bytes of 8-byte elements, the widest the rules take).
int64_t element_count(const ArrayDesc& a, const char* name) {
  if (a.ndim < 0 || a.ndim > 64)
    throw std::invalid_argument(std::string(name) + ": ndim = " + std::to_string(a.ndim) + " must be in [0, 64]");
  if (a.ndim > 0 && !a.shape)
    throw std::invalid_argument(std::string(name) + ": shape is null but ndim = " + std::to_string(a.ndim));
  constexpr int64_t kMaxElements = std::numeric_limits<std::ptrdiff_t>::max() / 8;
  int64_t count = 1;
  for (int i = 0; i < a.ndim; ++i) {
    if (a.shape[i] < 0)
      throw std::invalid_argument(std::string(name) + " has a negative size in its shape " + shape_of(a));
    if (a.shape[i] > 0 && count > kMaxElements / a.shape[i])
      throw std::invalid_argument(std::string(name) + " of shape " + shape_of(a) +
                                  " has more elements than one buffer can hold");
    count *= a.shape[i];
  }
  return count;
}

DType float_dtype(const ArrayDesc& a, const char* name) {
  if (!is_float(a.type))
    throw dtype_error(std::string(name) + " must be float32, float64, bfloat16 or float16; got " + type_name(a));
  return static_cast<DType>(a.type);
}

namespace {

void check_value_dtype(const ArrayDesc& a, LossArg arg, const ArrayDesc& logp) {
  const bool ok = a.type == logp.type || (a.type == ElementType::float32 && is_half(logp.type));
  if (!ok)
    throw dtype_error(std::string(kArgNames[arg]) + " has dtype " + type_name(a) + " but logp has " + type_name(logp) +
                      ": old_logp, advantages, ref_logp, lower and upper must have logp's dtype, or float32 beside a "
                      "bfloat16 or float16 logp");
}

void check_same_shape(const ArrayDesc& a, LossArg arg, const ArrayDesc& logp) {
  if (!same_shape(a, logp))
    throw std::invalid_argument(std::string(kArgNames[arg]) + " must have the shape of logp " + shape_of(logp) +
                                "; got " + shape_of(a));
}

}  // namespace

LossLayout loss_layout(const LossArrays& arrays, const LossOptions& options) {
  validate(options);
  const ArrayDesc* all[kLossArgs] = {&arrays.logp,     &arrays.old_logp, &arrays.advantages, &arrays.mask,
                                     &arrays.ref_logp, &arrays.lower,    &arrays.upper};
  for (int a = kArgLogp; a <= kArgAdvantages; ++a)
    if (!all[a]->present) throw std::invalid_argument(std::string(kArgNames[a]) + " is required");
  if (arrays.lower.present != arrays.upper.present)
    throw std::invalid_argument(bounds_come_together_message(arrays.lower.present));
  int64_t count[kLossArgs] = {};
  for (int a = kArgLogp; a < kLossArgs; ++a)
    if (all[a]->present) count[a] = element_count(*all[a], kArgNames[a]);

  const ArrayDesc& logp = arrays.logp;
  LossLayout layout;
  layout.compute = float_dtype(logp, "logp");
  for (LossArg a : {kArgOldLogp, kArgAdvantages, kArgRefLogp, kArgLower, kArgUpper}) {
    if (!all[a]->present) continue;
    check_value_dtype(*all[a], a, logp);
    if (all[a]->type != logp.type) layout.compute = DType::float32;  // a float32 argument beside a half logp
  }

  check_same_shape(arrays.old_logp, kArgOldLogp, logp);
  const int dim = logp.ndim;
  if (options.agg != Aggregation::token_mean && dim != 2)
    throw std::invalid_argument("agg='" + std::string(aggregation_name(options.agg)) +
                                "' needs 2-D [batch, tokens] inputs; got logp of shape " + shape_of(logp));
  if (dim == 2) {
    layout.rows = logp.shape[0];
    layout.cols = logp.shape[1];
  } else if (dim == 0) {
    layout.rows = layout.cols = 1;
  } else {
    layout.cols = logp.shape[dim - 1];
    layout.rows = layout.cols > 0 ? count[kArgLogp] / layout.cols : 0;
  }

  const ArrayDesc& adv = arrays.advantages;
  if (!same_shape(adv, logp)) {
    const bool per_row = dim == 2 && ((adv.ndim == 1 && adv.shape[0] == layout.rows) ||
                                      (adv.ndim == 2 && adv.shape[0] == layout.rows && adv.shape[1] == 1));
    if (!per_row)
      throw std::invalid_argument("advantages must have the shape of logp " + shape_of(logp) +
                                  " or, for 2-D logp, one value per sequence ([B] or [B, 1]); got " + shape_of(adv));
    layout.advantages_per_row = true;
  }

  if (arrays.mask.present) {
    const ArrayDesc& m = arrays.mask;
    if (m.type == ElementType::boolean || m.type == ElementType::uint8) {
      layout.mask_kind = MaskKind::boolean;
    } else if (is_float(m.type)) {
      layout.mask_kind = MaskKind::values;
    } else {
      throw dtype_error("mask must be bool, uint8 or floating point; got " + type_name(m));
    }
    check_same_shape(m, kArgMask, logp);
  }
  for (LossArg a : {kArgRefLogp, kArgLower, kArgUpper})
    if (all[a]->present) check_same_shape(*all[a], a, logp);
  if (options.kl_coef != 0.0 && !arrays.ref_logp.present)
    throw std::invalid_argument(kl_coef_needs_ref_message(options.kl_coef));

  // Every float argument is read in the compute dtype: convert those that differ (mask weights of another float
  // dtype, logp itself under mixed precision).
  for (int a = kArgLogp; a < kLossArgs; ++a) {
    const ArrayDesc& d = *all[a];
    if (d.present && is_float(d.type) && static_cast<DType>(d.type) != layout.compute) layout.convert |= 1u << a;
  }
  return layout;
}

LogitChunkLayout logit_chunk_layout(const char* op, const ArrayDesc& raw, int64_t raw_row_stride,
                                    int64_t raw_col_stride, const ArrayDesc& target, bool half_ok) {
  const std::string o(op);
  if (!raw.present || !target.present) throw std::invalid_argument(o + ": raw and target are required");
  element_count(raw, "raw");
  element_count(target, "target");
  if (raw.ndim != 2) throw std::invalid_argument(o + ": raw must be 2-D [rows, vocab], got shape " + shape_of(raw));
  const bool half = raw.type == ElementType::bfloat16 || raw.type == ElementType::float16;
  if (!(raw.type == ElementType::float32 || (half_ok && half)))
    throw dtype_error(o + ": raw must be float32" + (half_ok ? ", bfloat16 or float16" : "") + ", got " +
                      type_name(raw));
  LogitChunkLayout l{raw.shape[0], raw.shape[1], raw.shape[0] <= 1 ? raw.shape[1] : raw_row_stride};
  if (l.vocab < 1) throw std::invalid_argument(o + ": raw must have at least one column (vocab)");
  if (l.rows > 1 && l.vocab > 1 && raw_col_stride != 1)
    throw std::invalid_argument(o + ": raw's columns must be contiguous (stride 1), got stride " +
                                std::to_string(raw_col_stride));
  if (!(target.ndim == 1 && target.shape[0] == l.rows))
    throw std::invalid_argument(o + ": target must be [rows] = [" + std::to_string(l.rows) + "], got shape " +
                                shape_of(target));
  if (target.type != ElementType::int64) throw dtype_error(o + ": target must be int64, got " + type_name(target));
  if (l.row_stride < l.vocab)
    throw std::invalid_argument(o + ": raw's rows overlap (row stride " + std::to_string(l.row_stride) + ")");
  return l;
}

void check_row_values(const char* op, const char* name, const ArrayDesc& values, int64_t rows) {
  if (!values.present) return;
  element_count(values, name);
  if (!(values.ndim == 1 && values.shape[0] == rows))
    throw std::invalid_argument(std::string(op) + ": " + name + " must be [rows] = [" + std::to_string(rows) +
                                "], got shape " + shape_of(values));
  if (values.type != ElementType::float32)
    throw dtype_error(std::string(op) + ": " + name + " must be float32, got " + type_name(values));
}

}  // namespace bandpo
