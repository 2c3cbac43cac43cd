// Argument handling shared by the CPU and CUDA kernels of torch.ops.bandpo: option parsing and validation,
// dtype/device/shape checks with messages naming the argument, and the contiguous views handed to the core.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {

// Translate the core library's std::invalid_argument into Python's ValueError with the same message.
template <class F>
auto rethrow_as_value_error(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

DType to_dtype(const at::Tensor& t, const char* name);

BoundOptions bound_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                           bool relax_high_p, double ratio_max);

LossOptions loss_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                         bool relax_high_p, double ratio_max, std::optional<double> dual_clip, const std::string& agg,
                         std::optional<double> normalizer, double kl_coef, const std::string& kl_estimator);

// Checked, contiguous views of band_loss's tensors and the LossInputs pointing into them.
struct LossArgs {
  at::Tensor logp, old_logp, advantages, mask, ref_logp;
  LossInputs inputs;
};

LossArgs loss_args(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                   const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& ref_logp,
                   const LossOptions& options);

// Whether the CUDA band_loss synchronises after its forward to raise a ValueError (naming the argument and
// index) for bad values at valid positions. Off by default: the ops never synchronise, and bad values make
// the loss and the metrics NaN instead. Initialised from the environment variable BANDPO_CHECK_INPUTS=1;
// bandpo.set_input_checks() changes it.
bool input_checks_enabled();
void set_input_checks_enabled(bool enabled);

}  // namespace bandpo
