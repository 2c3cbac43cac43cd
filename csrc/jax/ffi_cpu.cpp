// The CPU handlers of bandpo's JAX face (python/bandpo/jax.py): XLA FFI targets over the core's CPU entry points,
// built against the header-only FFI API of the jaxlib present at build time (its binary interface is versioned
// and stable across jaxlib releases). No Python C API: the library ships once for every Python.
//
//   bandpo_band_bounds          (old_logp) -> (lower, upper)
//   bandpo_band_loss            (logp, old_logp, advantages, mask, ref_logp, normalizer) -> (loss, metrics)
//   bandpo_band_loss_backward   (grad_loss, logp, old_logp, advantages, mask, ref_logp, normalizer) -> grad_logp
//   bandpo_logit_stats          (raw, target) -> (logp, entropy)          the lm_head's chunk step
//   bandpo_logit_grad           (raw, target, grad_logp, grad_entropy, logp, entropy) -> grad_raw (aliases raw)
// (the jax targets' names; the handlers' symbols are bandpo_xla_*, apart from the C ABI's bandpo_* functions)
//
// normalizer is a one-value buffer as well as an attribute, so that it may be computed in the program (a psum of
// the counts under shard_map): here the buffer's value counts (NaN: none), and its range is checked when the call
// runs. Attributes and layout: ffi_common.h.
#include "bandpo/cpu.h"
#include "ffi_common.h"

namespace bandpo {
namespace jax {
namespace {

// The call's options: the attributes', with normalizer from its buffer (NaN: none), then validated.
LossOptions loss_options(const ffi::Dictionary& attrs, const ffi::AnyBuffer& normalizer) {
  LossOptions o = options_from<LossOptions>(attrs);
  o.normalizer = load_scalar(normalizer, "normalizer");
  validate(o);
  return o;
}

ffi::Error band_bounds_impl(ffi::AnyBuffer old_logp, ffi::Result<ffi::AnyBuffer> lower,
                            ffi::Result<ffi::AnyBuffer> upper, ffi::Dictionary attrs) {
  return guarded([&] {
    const BoundOptions options = options_from<BoundOptions>(attrs);
    const BufferDesc d(old_logp, true);
    const DType dtype = float_dtype(d.desc, "old_logp");
    const int64_t n = element_count(d.desc, "old_logp");
    check_output(lower, old_logp.element_type(), static_cast<size_t>(n), "lower");
    check_output(upper, old_logp.element_type(), static_cast<size_t>(n), "upper");
    band_bounds_cpu(dtype, old_logp.untyped_data(), n, options, lower->untyped_data(), upper->untyped_data());
  });
}

ffi::Error band_loss_impl(LossArgs args, ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> metrics,
                          ffi::Dictionary attrs) {
  return guarded([&] {
    const LossBuffers buffers(args);
    const auto& in = buffers.in;
    const LossOptions options = loss_options(attrs, *in[kNormalizerBuffer]);
    const ffi::AnyBuffer& logp = *in[0];
    const LossInputs li = loss_inputs(in, attrs, options);
    check_output(loss, logp.element_type(), 1, "loss");
    check_output(metrics, ffi::DataType::F32, kNumMetrics, "metrics");
    const LossResult r = band_loss_forward_cpu(li, options);
    store_as(li.dtype, loss->untyped_data(), r.loss);
    float* m = static_cast<float*>(metrics->untyped_data());
    for (int i = 0; i < kNumMetrics; ++i) m[i] = r.metrics[i];
  });
}

ffi::Error band_loss_backward_impl(ffi::AnyBuffer grad_loss, LossArgs args, ffi::Result<ffi::AnyBuffer> grad,
                                   ffi::Dictionary attrs) {
  return guarded([&] {
    const LossBuffers buffers(args);
    const auto& in = buffers.in;
    const LossOptions options = loss_options(attrs, *in[kNormalizerBuffer]);
    const LossInputs li = loss_inputs(in, attrs, options);
    check_output(grad, in[0]->element_type(), in[0]->element_count(), "grad_logp");
    band_loss_backward_cpu(li, options, load_scalar(grad_loss, "grad_loss"), grad->untyped_data());
  });
}

ffi::Error logit_stats_impl(ffi::AnyBuffer raw, ffi::AnyBuffer target, ffi::Result<ffi::AnyBuffer> logp,
                            ffi::Result<ffi::AnyBuffer> entropy, ffi::Dictionary attrs) {
  return guarded([&] {
    const LogitCall call = stats_call(raw, target, logp, entropy, attrs);
    logit_stats_cpu(static_cast<const float*>(raw.untyped_data()), call.chunk, call.options,
                    static_cast<float*>(logp->untyped_data()), static_cast<float*>(entropy->untyped_data()));
  });
}

ffi::Error logit_grad_impl(ffi::AnyBuffer raw, ffi::AnyBuffer target, ffi::AnyBuffer grad_logp,
                           ffi::AnyBuffer grad_entropy, ffi::AnyBuffer logp, ffi::AnyBuffer entropy,
                           ffi::Result<ffi::AnyBuffer> grad_raw, ffi::Dictionary attrs) {
  return guarded([&] {
    const ffi::AnyBuffer* const in[6] = {&raw, &target, &grad_logp, &grad_entropy, &logp, &entropy};
    const LogitGradCall call(in, grad_raw, attrs);
    logit_grad_cpu(call.out, call.chunk, call.options, call.grads);
  });
}

}  // namespace
}  // namespace jax
}  // namespace bandpo

namespace ffi = xla::ffi;

// The handlers are the library's only exported symbols (it is built with hidden visibility).
#pragma GCC visibility push(default)

namespace binding = bandpo::jax::binding;

XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_bounds, bandpo::jax::band_bounds_impl, binding::bounds(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_loss, bandpo::jax::band_loss_impl, binding::loss(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_loss_backward, bandpo::jax::band_loss_backward_impl,
                              binding::loss_backward(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_logit_stats, bandpo::jax::logit_stats_impl,
                              binding::logit_stats(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_logit_grad, bandpo::jax::logit_grad_impl,
                              binding::logit_grad(ffi::Ffi::Bind()));

#pragma GCC visibility pop
