// Autograd for bandpo::band_loss, registered for the Autograd dispatch key (all devices).
//
// Why C++ and not torch.library.register_autograd: the op's schema has a keyword-only Tensor argument
// (ref_logp), which register_autograd rejects ("register_autograd with kwarg-only Tensor args"). A C++
// autograd kernel has no such limit, works under torch.compile (AOTAutograd traces through it and records
// band_loss / band_loss_backward), and its backward is the band_loss_backward op, which recomputes what it
// needs from the inputs: nothing N-sized is kept between forward and backward beyond the inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace bandpo {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LossConfig {
  std::string divergence;
  double delta, eps_low, eps_high;
  bool relax_high_p;
  double ratio_max;
  std::optional<double> dual_clip;
  std::string agg;
  std::optional<double> normalizer;
  double kl_coef;
  std::string kl_estimator;
};

std::tuple<at::Tensor, at::Tensor> call_band_loss(const at::Tensor& logp, const at::Tensor& old_logp,
                                                  const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                                  const std::optional<at::Tensor>& ref_logp, const LossConfig& c) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bandpo::band_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           std::string, double, double, double, bool, double, std::optional<double>, std::string,
                           std::optional<double>, const std::optional<at::Tensor>&, double, std::string)>();
  return op.call(logp, old_logp, advantages, mask, c.divergence, c.delta, c.eps_low, c.eps_high, c.relax_high_p,
                 c.ratio_max, c.dual_clip, c.agg, c.normalizer, ref_logp, c.kl_coef, c.kl_estimator);
}

at::Tensor call_band_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logp, const at::Tensor& old_logp,
                                   const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                   const std::optional<at::Tensor>& ref_logp, const LossConfig& c) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bandpo::band_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         std::string, double, double, double, bool, double, std::optional<double>,
                                         std::string, std::optional<double>, double, std::string)>();
  return op.call(grad_loss, logp, old_logp, advantages, mask, ref_logp, c.divergence, c.delta, c.eps_low, c.eps_high,
                 c.relax_high_p, c.ratio_max, c.dual_clip, c.agg, c.normalizer, c.kl_coef, c.kl_estimator);
}

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class BandLossFunction : public torch::autograd::Function<BandLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logp, const at::Tensor& old_logp,
                               const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& ref_logp, const LossConfig& config) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, metrics] = call_band_loss(logp, old_logp, advantages, mask, ref_logp, config);
    ctx->save_for_backward({logp, old_logp, advantages, mask.value_or(at::Tensor()), ref_logp.value_or(at::Tensor())});
    ctx->saved_data["divergence"] = config.divergence;
    ctx->saved_data["delta"] = config.delta;
    ctx->saved_data["eps_low"] = config.eps_low;
    ctx->saved_data["eps_high"] = config.eps_high;
    ctx->saved_data["relax_high_p"] = config.relax_high_p;
    ctx->saved_data["ratio_max"] = config.ratio_max;
    ctx->saved_data["dual_clip"] = config.dual_clip.has_value() ? c10::IValue(*config.dual_clip) : c10::IValue();
    ctx->saved_data["agg"] = config.agg;
    ctx->saved_data["normalizer"] = config.normalizer.has_value() ? c10::IValue(*config.normalizer) : c10::IValue();
    ctx->saved_data["kl_coef"] = config.kl_coef;
    ctx->saved_data["kl_estimator"] = config.kl_estimator;
    ctx->mark_non_differentiable({metrics});
    return {loss, metrics};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const LossConfig config{d.at("divergence").toStringRef(),
                            d.at("delta").toDouble(),
                            d.at("eps_low").toDouble(),
                            d.at("eps_high").toDouble(),
                            d.at("relax_high_p").toBool(),
                            d.at("ratio_max").toDouble(),
                            d.at("dual_clip").isNone() ? std::nullopt : std::optional<double>(d.at("dual_clip").toDouble()),
                            d.at("agg").toStringRef(),
                            d.at("normalizer").isNone() ? std::nullopt
                                                        : std::optional<double>(d.at("normalizer").toDouble()),
                            d.at("kl_coef").toDouble(),
                            d.at("kl_estimator").toStringRef()};
    at::Tensor grad_logp;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      grad_logp = call_band_loss_backward(grads[0], saved[0], saved[1], saved[2], optional_of(saved[3]),
                                          optional_of(saved[4]), config);
    }
    // One gradient per forward() argument after ctx: only logp is differentiated.
    return {grad_logp, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> band_loss_autograd(
    const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
    const std::optional<at::Tensor>& mask, std::string divergence, double delta, double eps_low, double eps_high,
    bool relax_high_p, double ratio_max, std::optional<double> dual_clip, std::string agg,
    std::optional<double> normalizer, const std::optional<at::Tensor>& ref_logp, double kl_coef,
    std::string kl_estimator) {
  const LossConfig config{divergence, delta,     eps_low, eps_high,   relax_high_p, ratio_max,
                          dual_clip,  agg,       normalizer, kl_coef, kl_estimator};
  const variable_list out = BandLossFunction::apply(logp, old_logp, advantages, mask, ref_logp, config);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(bandpo, Autograd, m) { m.impl("band_loss", &band_loss_autograd); }

}  // namespace bandpo
