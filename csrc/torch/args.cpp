// Argument handling shared by the CPU and CUDA kernels of torch.ops.bandpo (see args.h).
#include "args.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace bandpo {

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::float32;
    case at::kDouble: return DType::float64;
    case at::kBFloat16: return DType::bfloat16;
    case at::kHalf: return DType::float16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, float64, bfloat16 or float16; got ", t.scalar_type());
  }
}

static void check_same(const at::Tensor& t, const char* name, const at::Tensor& logp) {
  TORCH_CHECK_TYPE(t.scalar_type() == logp.scalar_type(), name, " has dtype ", t.scalar_type(), " but logp has ",
                   logp.scalar_type(), ": logp, old_logp, advantages and ref_logp must share one dtype");
  TORCH_CHECK_VALUE(t.device() == logp.device(), name, " is on ", t.device(), " but logp is on ", logp.device());
}

static void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& logp) {
  TORCH_CHECK_VALUE(t.sizes() == logp.sizes(), name, " must have the shape of logp ", logp.sizes(), "; got ",
                    t.sizes());
}

BoundOptions bound_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                           bool relax_high_p, double ratio_max) {
  return rethrow_as_value_error([&] {
    BoundOptions o;
    o.divergence = parse_divergence(divergence);
    o.delta = delta;
    o.eps_low = eps_low;
    o.eps_high = eps_high;
    o.relax_high_p = relax_high_p;
    o.ratio_max = ratio_max;
    validate(o);
    return o;
  });
}

LossOptions loss_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                         bool relax_high_p, double ratio_max, std::optional<double> dual_clip, const std::string& agg,
                         std::optional<double> normalizer, double kl_coef, const std::string& kl_estimator) {
  return rethrow_as_value_error([&] {
    LossOptions o;
    o.bounds = bound_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max);
    o.dual_clip = dual_clip.has_value() ? *dual_clip : std::numeric_limits<double>::infinity();
    o.agg = parse_aggregation(agg);
    o.normalizer = normalizer.has_value() ? *normalizer : std::numeric_limits<double>::quiet_NaN();
    if (normalizer.has_value() && std::isnan(*normalizer))
      throw std::invalid_argument("normalizer must be a finite number > 0 (or None); got nan");
    o.kl_coef = kl_coef;
    o.kl_estimator = parse_kl_estimator(kl_estimator);
    validate(o);
    return o;
  });
}

LossArgs loss_args(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                   const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& ref_logp,
                   const LossOptions& options) {
  LossArgs a;
  LossInputs& in = a.inputs;
  in.dtype = to_dtype(logp, "logp");
  check_same(old_logp, "old_logp", logp);
  check_same(advantages, "advantages", logp);
  check_same_shape(old_logp, "old_logp", logp);

  const int64_t dim = logp.dim();
  const bool seq_agg = options.agg != Aggregation::token_mean;
  TORCH_CHECK_VALUE(!seq_agg || dim == 2, "agg='", aggregation_name(options.agg),
                    "' needs 2-D [batch, tokens] inputs; got logp of shape ", logp.sizes());
  if (dim == 2) {
    in.rows = logp.size(0);
    in.cols = logp.size(1);
  } else if (dim == 0) {
    in.rows = in.cols = 1;
  } else {
    in.cols = logp.size(dim - 1);
    in.rows = in.cols > 0 ? logp.numel() / in.cols : 0;
  }

  if (advantages.sizes() == logp.sizes()) {
    a.advantages = advantages.contiguous();
  } else {
    const bool per_row = dim == 2 && ((advantages.dim() == 1 && advantages.size(0) == in.rows) ||
                                      (advantages.dim() == 2 && advantages.size(0) == in.rows && advantages.size(1) == 1));
    TORCH_CHECK_VALUE(per_row, "advantages must have the shape of logp ", logp.sizes(),
                      " or, for 2-D logp, one value per sequence ([B] or [B, 1]); got ", advantages.sizes());
    a.advantages = advantages.reshape({in.rows}).contiguous();
    in.advantages_per_row = true;
  }

  a.logp = logp.contiguous();
  a.old_logp = old_logp.contiguous();
  in.logp = a.logp.data_ptr();
  in.old_logp = a.old_logp.data_ptr();
  in.advantages = a.advantages.data_ptr();

  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(m.device() == logp.device(), "mask is on ", m.device(), " but logp is on ", logp.device());
    check_same_shape(m, "mask", logp);
    if (m.scalar_type() == at::kBool || m.scalar_type() == at::kByte) {
      in.mask_kind = MaskKind::boolean;
      a.mask = m.contiguous();
    } else {
      TORCH_CHECK_TYPE(at::isFloatingType(m.scalar_type()), "mask must be bool or floating point; got ",
                       m.scalar_type());
      in.mask_kind = MaskKind::values;
      // Weights are read in logp's dtype: a mask of another float dtype is converted (one mask-sized copy).
      a.mask = m.to(logp.scalar_type()).contiguous();
    }
    in.mask = a.mask.data_ptr();
  }
  if (ref_logp.has_value()) {
    check_same(*ref_logp, "ref_logp", logp);
    check_same_shape(*ref_logp, "ref_logp", logp);
    a.ref_logp = ref_logp->contiguous();
    in.ref_logp = a.ref_logp.data_ptr();
  }
  TORCH_CHECK_VALUE(options.kl_coef == 0.0 || ref_logp.has_value(), "kl_coef = ", options.kl_coef,
                    " needs ref_logp (the reference policy's log-probabilities)");
  return a;
}

namespace {
std::atomic<bool>& input_checks_flag() {
  static std::atomic<bool> flag([] {
    const char* env = std::getenv("BANDPO_CHECK_INPUTS");
    return env != nullptr && std::strcmp(env, "") != 0 && std::strcmp(env, "0") != 0;
  }());
  return flag;
}
}  // namespace

bool input_checks_enabled() { return input_checks_flag().load(std::memory_order_relaxed); }
void set_input_checks_enabled(bool enabled) { input_checks_flag().store(enabled, std::memory_order_relaxed); }

}  // namespace bandpo
