// The CUDA handlers of bandpo's JAX face: the same five targets as ffi_cpu.cpp, registered for the CUDA platform,
// over the core's CUDA entry points (bandpo/cuda.h) on XLA's stream, with their workspace from XLA's scratch
// allocator, as jaxlib's own GPU solver handlers take theirs (XLA orders that memory on the stream). Nothing
// synchronises the host.
//
// normalizer: the attribute's number (NaN: none). A normalizer computed in the program would have to be read on the
// host here (a synchronisation), so these handlers refuse it: on CUDA pass a number.
#include <cuda_runtime_api.h>

#include "bandpo/cuda.h"
#include "ffi_common.h"

namespace bandpo {
namespace jax {
namespace {

DType float_dtype_of(const ffi::AnyBuffer& b, const char* name) { return float_dtype(BufferDesc(b, true).desc, name); }

// The call's workspace: `bytes` of scratch (none for 0).
cuda::DeviceBuffer scratch_of(ffi::ScratchAllocator& scratch, size_t bytes) {
  if (bytes == 0) return cuda::DeviceBuffer{};
  const std::optional<void*> p = scratch.Allocate(bytes, 256);
  if (!p.has_value() || *p == nullptr)
    throw std::runtime_error("XLA's scratch allocator could not give " + std::to_string(bytes) + " bytes");
  return cuda::DeviceBuffer{*p, bytes};
}

LossOptions loss_options(const ffi::Dictionary& attrs) {
  const auto computed = attrs.get<bool>("normalizer_in_program");
  if (computed.has_value() && *computed)
    throw std::invalid_argument(
        "normalizer: on CUDA a number, not an array computed in the program (reading it would synchronise)");
  return options_from<LossOptions>(attrs);
}

ffi::Error band_bounds_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer old_logp,
                            ffi::Result<ffi::AnyBuffer> lower, ffi::Result<ffi::AnyBuffer> upper,
                            ffi::Dictionary attrs) {
  return guarded([&] {
    const BoundOptions options = options_from<BoundOptions>(attrs);
    const DType dtype = float_dtype_of(old_logp, "old_logp");
    const int64_t n = element_count(BufferDesc(old_logp, true).desc, "old_logp");
    check_output(lower, old_logp.element_type(), static_cast<size_t>(n), "lower");
    check_output(upper, old_logp.element_type(), static_cast<size_t>(n), "upper");
    const cuda::DeviceBuffer ws = scratch_of(scratch, cuda::bounds_workspace_bytes(dtype, options));
    cuda::band_bounds(dtype, old_logp.untyped_data(), n, options, lower->untyped_data(), upper->untyped_data(), ws,
                      stream);
  });
}

ffi::Error band_loss_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, LossArgs args,
                          ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> metrics,
                          ffi::Dictionary attrs) {
  return guarded([&] {
    const LossBuffers buffers(args);
    const auto& in = buffers.in;
    const LossOptions options = loss_options(attrs);
    const LossInputs li = loss_inputs(in, attrs, options);
    check_output(loss, in[0]->element_type(), 1, "loss");
    check_output(metrics, ffi::DataType::F32, kNumMetrics, "metrics");
    const cuda::DeviceBuffer ws = scratch_of(scratch, cuda::loss_workspace_bytes(li, options));
    cuda::band_loss_forward(li, options, loss->untyped_data(), static_cast<float*>(metrics->untyped_data()), nullptr,
                            ws, stream);
  });
}

ffi::Error band_loss_backward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer grad_loss,
                                   LossArgs args, ffi::Result<ffi::AnyBuffer> grad, ffi::Dictionary attrs) {
  return guarded([&] {
    const LossBuffers buffers(args);
    const auto& in = buffers.in;
    const LossOptions options = loss_options(attrs);
    const LossInputs li = loss_inputs(in, attrs, options);
    check_output(grad, in[0]->element_type(), in[0]->element_count(), "grad_logp");
    if (grad_loss.element_count() != 1) throw std::invalid_argument("grad_loss must hold one value");
    const cuda::DeviceScalar g{grad_loss.untyped_data(), float_dtype_of(grad_loss, "grad_loss")};
    const cuda::DeviceBuffer ws = scratch_of(scratch, cuda::loss_workspace_bytes(li, options));
    cuda::band_loss_backward(li, options, g, grad->untyped_data(), ws, stream);
  });
}

ffi::Error logit_stats_cuda(cudaStream_t stream, ffi::AnyBuffer raw, ffi::AnyBuffer target,
                            ffi::Result<ffi::AnyBuffer> logp, ffi::Result<ffi::AnyBuffer> entropy,
                            ffi::Dictionary attrs) {
  return guarded([&] {
    const LogitCall call = stats_call(raw, target, logp, entropy, attrs);
    cuda::logit_stats(DType::float32, raw.untyped_data(), call.chunk, call.options,
                      static_cast<float*>(logp->untyped_data()), static_cast<float*>(entropy->untyped_data()), stream);
  });
}

ffi::Error logit_grad_cuda(cudaStream_t stream, ffi::AnyBuffer raw, ffi::AnyBuffer target, ffi::AnyBuffer grad_logp,
                           ffi::AnyBuffer grad_entropy, ffi::AnyBuffer logp, ffi::AnyBuffer entropy,
                           ffi::Result<ffi::AnyBuffer> grad_raw, ffi::Dictionary attrs) {
  return guarded([&] {
    const ffi::AnyBuffer* const in[6] = {&raw, &target, &grad_logp, &grad_entropy, &logp, &entropy};
    const LogitGradCall call(in, grad_raw, attrs);
    cuda::logit_grad(DType::float32, call.out, call.chunk, call.options, call.grads, stream);
  });
}

}  // namespace
}  // namespace jax
}  // namespace bandpo

namespace ffi = xla::ffi;

// The handlers are the library's only exported symbols (it is built with hidden visibility).
#pragma GCC visibility push(default)

namespace binding = bandpo::jax::binding;

// XLA's stream, then its scratch allocator for the calls that take a workspace
static auto on_stream() { return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>(); }
static auto with_scratch() { return on_stream().Ctx<ffi::ScratchAllocator>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_bounds_cuda, bandpo::jax::band_bounds_cuda,
                              binding::bounds(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_loss_cuda, bandpo::jax::band_loss_cuda, binding::loss(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_band_loss_backward_cuda, bandpo::jax::band_loss_backward_cuda,
                              binding::loss_backward(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_logit_stats_cuda, bandpo::jax::logit_stats_cuda,
                              binding::logit_stats(on_stream()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bandpo_xla_logit_grad_cuda, bandpo::jax::logit_grad_cuda,
                              binding::logit_grad(on_stream()));

#pragma GCC visibility pop
