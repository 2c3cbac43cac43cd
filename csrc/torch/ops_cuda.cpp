// CUDA kernels of torch.ops.bandpo over the core library's CUDA entry points (bandpo/cuda.h).
//
// Only device-generic c10 headers are used (DeviceGuard, the virtual guard's current stream): this file then
// also compiles against a CPU-only torch, which is how CI checks it on machines without a CUDA torch.
// Work runs on the current stream of the inputs' device; workspaces come from torch's caching allocator;
// nothing synchronises (the ops can be captured in a CUDA graph) unless input checks are switched on.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "args.h"
#include "bandpo/cuda.h"

namespace bandpo {
namespace {

cudaStream_t current_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(guard_impl.getStream(device).native_handle());
}

at::Tensor workspace(size_t bytes, const at::Device& device) {
  return at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(device));
}

// Raises the CPU op's ValueError (argument and flat index) for inputs the device found bad: the CPU op is
// called through the dispatcher on host copies, so the message is the one CPU users see.
[[noreturn]] void raise_for_bad_values(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                                       const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& ref_logp,
                                       const LossOptions& options, int64_t count) {
  static auto cpu_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("bandpo::band_loss", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, std::string, double, double, double, bool, double,
                               std::optional<double>, std::string, std::optional<double>,
                               const std::optional<at::Tensor>&, double, std::string)>();
  auto host = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->detach().cpu()) : std::nullopt;
  };
  const BoundOptions& b = options.bounds;
  cpu_op.call(logp.detach().cpu(), old_logp.detach().cpu(), advantages.detach().cpu(), host(mask),
              divergence_name(b.divergence), b.delta, b.eps_low, b.eps_high, b.relax_high_p, b.ratio_max,
              std::isinf(options.dual_clip) ? std::nullopt : std::optional<double>(options.dual_clip),
              aggregation_name(options.agg),
              std::isnan(options.normalizer) ? std::nullopt : std::optional<double>(options.normalizer),
              host(ref_logp), options.kl_coef, kl_estimator_name(options.kl_estimator));
  TORCH_CHECK_VALUE(false, "band_loss: ", count, " valid positions hold NaN or out-of-range values");
}

std::tuple<at::Tensor, at::Tensor> band_bounds_cuda_op(const at::Tensor& old_logp, std::string divergence,
                                                       double delta, double eps_low, double eps_high,
                                                       bool relax_high_p, double ratio_max) {
  const BoundOptions options = bound_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max);
  const DType dtype = to_dtype(old_logp, "old_logp");
  const c10::DeviceGuard device_guard(old_logp.device());
  const at::Tensor in = old_logp.contiguous();
  at::Tensor lower = at::empty_like(in, at::MemoryFormat::Contiguous);
  at::Tensor upper = at::empty_like(in, at::MemoryFormat::Contiguous);
  rethrow_as_value_error([&] {
    cuda::band_bounds(dtype, in.data_ptr(), in.numel(), options, lower.data_ptr(), upper.data_ptr(),
                      current_stream(in.device()));
  });
  return {lower, upper};
}

std::tuple<at::Tensor, at::Tensor> band_loss_cuda_op(const at::Tensor& logp, const at::Tensor& old_logp,
                                                     const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                                     std::string divergence, double delta, double eps_low,
                                                     double eps_high, bool relax_high_p, double ratio_max,
                                                     std::optional<double> dual_clip, std::string agg,
                                                     std::optional<double> normalizer,
                                                     const std::optional<at::Tensor>& ref_logp, double kl_coef,
                                                     std::string kl_estimator) {
  const LossOptions options = loss_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max, dual_clip,
                                           agg, normalizer, kl_coef, kl_estimator);
  const c10::DeviceGuard device_guard(logp.device());
  const LossArgs args = loss_args(logp, old_logp, advantages, mask, ref_logp, options);
  at::Tensor loss = at::empty({}, logp.options());
  at::Tensor metrics = at::empty({kNumMetrics}, logp.options().dtype(at::kFloat));
  const bool check = input_checks_enabled();
  at::Tensor invalid = check ? at::empty({1}, logp.options().dtype(at::kLong)) : at::Tensor();
  const size_t bytes = cuda::loss_workspace_bytes(args.inputs, options);
  at::Tensor ws = workspace(bytes, logp.device());
  rethrow_as_value_error([&] {
    cuda::band_loss_forward(args.inputs, options, loss.data_ptr(), metrics.data_ptr<float>(),
                            check ? invalid.data_ptr<int64_t>() : nullptr, ws.data_ptr(), bytes,
                            current_stream(logp.device()));
  });
  if (check) {
    const int64_t count = invalid.item<int64_t>();
    if (count > 0) raise_for_bad_values(logp, old_logp, advantages, mask, ref_logp, options, count);
  }
  return {loss, metrics};
}

at::Tensor band_loss_backward_cuda_op(const at::Tensor& grad_loss, const at::Tensor& logp, const at::Tensor& old_logp,
                                      const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& ref_logp, std::string divergence, double delta,
                                      double eps_low, double eps_high, bool relax_high_p, double ratio_max,
                                      std::optional<double> dual_clip, std::string agg,
                                      std::optional<double> normalizer, double kl_coef, std::string kl_estimator) {
  const LossOptions options = loss_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max, dual_clip,
                                           agg, normalizer, kl_coef, kl_estimator);
  const c10::DeviceGuard device_guard(logp.device());
  const LossArgs args = loss_args(logp, old_logp, advantages, mask, ref_logp, options);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must hold one value; got shape ", grad_loss.sizes());
  TORCH_CHECK_VALUE(grad_loss.device() == logp.device(), "grad_loss is on ", grad_loss.device(), " but logp is on ",
                    logp.device());
  // The incoming gradient stays on the device: converted there, read by the scale kernel.
  const at::Tensor g = grad_loss.reshape({1}).to(at::kDouble).contiguous();
  at::Tensor grad = at::empty_like(args.logp, at::MemoryFormat::Contiguous);
  const size_t bytes = cuda::loss_workspace_bytes(args.inputs, options);
  at::Tensor ws = workspace(bytes, logp.device());
  rethrow_as_value_error([&] {
    cuda::band_loss_backward(args.inputs, options, g.data_ptr<double>(), grad.data_ptr(), ws.data_ptr(), bytes,
                             current_stream(logp.device()));
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(bandpo, CUDA, m) {
  m.impl("band_bounds", &band_bounds_cuda_op);
  m.impl("band_loss", &band_loss_cuda_op);
  m.impl("band_loss_backward", &band_loss_backward_cuda_op);
}

}  // namespace bandpo
