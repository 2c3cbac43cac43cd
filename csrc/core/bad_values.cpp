// The message of a refused value: which argument, which index, what is wrong with it.
#include "bad_values.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "bandpo/dtypes.h"
#include "bandpo/token_loss.h"
#include "dispatch.h"

namespace bandpo {
namespace detail {

void throw_if_bad_value(const LossInputs& in, const LossOptions& options, int64_t begin, int64_t end) {
  auto value = [&](const void* p, int64_t i) -> double {
    switch (in.dtype) {
      case DType::float32:
        return load<double>(static_cast<const float*>(p), i);
      case DType::float64:
        return load<double>(static_cast<const double*>(p), i);
      case DType::bfloat16:
        return load<double>(static_cast<const bfloat16*>(p), i);
      case DType::float16:
        return load<double>(static_cast<const float16*>(p), i);
    }
    return 0.0;
  };
  // A log-probability's fault: NaN, or above the tolerance (a probability above 1).
  auto log_prob_fault = [](std::ostringstream& msg, const char* name, int64_t i, double v) {
    if (std::isnan(v)) {
      msg << name << "[" << i << "] is NaN at a valid (mask != 0) position";
    } else if (v > kLogProbTolerance) {
      msg << name << "[" << i << "] = " << v << " > 0 is not a log-probability (a probability above 1; "
          << "log-probs may exceed 0 by rounding only, up to " << kLogProbTolerance << ")";
    } else {
      return false;
    }
    return true;
  };
  // ratio_max as the kernels hold a given upper bound to it: in the compute type, then the storage type
  double upper_cap = options.bounds.ratio_max;
  with_storage_type(in.dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeType<T>::type;
    upper_cap = static_cast<double>(given_upper_cap<T>(static_cast<C>(options.bounds.ratio_max)));
  });
  for (int64_t i = begin; i < end; ++i) {
    double w = 1.0;
    if (in.mask_kind == MaskKind::boolean) w = static_cast<const uint8_t*>(in.mask)[i] ? 1.0 : 0.0;
    if (in.mask_kind == MaskKind::values) w = value(in.mask, i);
    if (w == 0.0) continue;
    const int64_t adv_index = in.advantages_per_row ? i / std::max<int64_t>(in.cols, 1) : i;
    const double logp = value(in.logp, i), old_logp = value(in.old_logp, i), adv = value(in.advantages, adv_index);
    const double ref = in.ref_logp ? value(in.ref_logp, i) : 0.0;
    const double lower = in.lower ? value(in.lower, i) : 0.0, upper = in.upper ? value(in.upper, i) : 1.0;
    const bool bad_bounds = in.has_given_bounds() && bad_given_bounds(lower, upper, upper_cap);
    if (!bad_token(logp, old_logp, adv, ref, w) && !bad_bounds) continue;
    std::ostringstream msg;
    msg << "band_loss: ";
    // The first fault in argument order: mask, logp, old_logp, advantages, ref_logp, lower, upper.
    if (std::isnan(w)) {
      msg << "mask[" << i << "] is NaN";
    } else if (!log_prob_fault(msg, "logp", i, logp) && !log_prob_fault(msg, "old_logp", i, old_logp)) {
      if (!std::isfinite(adv)) {
        msg << "advantages[" << adv_index << "] = " << adv << " is not finite at a valid (mask != 0) position";
      } else if (!log_prob_fault(msg, "ref_logp", i, ref)) {
        if (!(lower >= 0.0 && lower <= 1.0))
          msg << "lower[" << i << "] = " << lower << " must be in [0, 1] at a valid (mask != 0) position";
        else
          msg << "upper[" << i << "] = " << upper << " must be in [1, ratio_max = " << options.bounds.ratio_max
              << "] at a valid (mask != 0) position";
      }
    }
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace detail
}  // namespace bandpo
