// The message of a refused value: which argument, which index, what is wrong with it.
#include "bad_values.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "bandpo/dtypes.h"
#include "bandpo/token_loss.h"

namespace bandpo {
namespace detail {

void throw_if_bad_value(const LossInputs& in, int64_t begin, int64_t end) {
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
  for (int64_t i = begin; i < end; ++i) {
    double w = 1.0;
    if (in.mask_kind == MaskKind::boolean) w = static_cast<const uint8_t*>(in.mask)[i] ? 1.0 : 0.0;
    if (in.mask_kind == MaskKind::values) w = value(in.mask, i);
    if (w == 0.0) continue;
    const int64_t adv_index = in.advantages_per_row ? i / std::max<int64_t>(in.cols, 1) : i;
    const double logp = value(in.logp, i), old_logp = value(in.old_logp, i), adv = value(in.advantages, adv_index);
    const double ref = in.ref_logp ? value(in.ref_logp, i) : 0.0;
    if (!bad_token(logp, old_logp, adv, ref, w)) continue;
    std::ostringstream msg;
    msg << "band_loss: ";
    // The first fault in argument order: mask, logp, old_logp, advantages, ref_logp.
    if (std::isnan(w)) {
      msg << "mask[" << i << "] is NaN";
    } else if (!log_prob_fault(msg, "logp", i, logp) && !log_prob_fault(msg, "old_logp", i, old_logp)) {
      if (!std::isfinite(adv))
        msg << "advantages[" << adv_index << "] = " << adv << " is not finite at a valid (mask != 0) position";
      else
        log_prob_fault(msg, "ref_logp", i, ref);  // the only fault bad_token() leaves
    }
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace detail
}  // namespace bandpo
