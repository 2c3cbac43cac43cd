// CUDA kernels of torch.ops.bandpo over the core library's CUDA entry points (bandpo/cuda.h), on PyTorch's
// ABI-stable API.
//
// Work runs on torch's current stream of the inputs' device; workspaces come from torch's caching
// allocator; nothing synchronises (the ops can be captured in a CUDA graph) unless input checks are on.
//
// The current CUDA stream: the stable accelerator API gives its native handle only from torch 2.13 on, so
// for older targets it comes from the AOTInductor C shim function aoti_torch_get_current_cuda_stream (a C
// symbol of libtorch_cuda, stable since torch 2.3), looked up when first needed. Looking it up rather than
// linking it lets this module load beside a CPU-only torch, where no CUDA tensor (and no call here) exists.
#include <dlfcn.h>

#include <torch/csrc/stable/accelerator.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "args.h"
#include "bandpo/cpu.h"
#include "bandpo/cuda.h"

namespace bandpo {
namespace {

using torch::stable::detail::from;
using torch::stable::detail::to;

cudaStream_t current_stream(const Tensor& t) {
  using GetStream = int32_t (*)(int32_t device_index, void** stream);
  static const GetStream get_stream = []() -> GetStream {
    void* lib = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    return lib ? reinterpret_cast<GetStream>(dlsym(lib, "aoti_torch_get_current_cuda_stream")) : nullptr;
  }();
  BANDPO_CHECK_VALUE(get_stream != nullptr,
                     "bandpo: torch's CUDA library (libtorch_cuda.so, aoti_torch_get_current_cuda_stream) is not "
                     "loaded, but a CUDA tensor was given");
  void* stream = nullptr;
  const int32_t status = get_stream(static_cast<int32_t>(t.get_device_index()), &stream);
  BANDPO_CHECK_VALUE(status == 0, "bandpo: torch could not give the current CUDA stream of ", device_name(t));
  return static_cast<cudaStream_t>(stream);
}

Tensor workspace(size_t bytes, const Tensor& device_of) {
  return empty_on({static_cast<int64_t>(bytes)}, ScalarType::Byte, device_of);
}

std::optional<Tensor> on_host(const std::optional<Tensor>& t) {
  return t.has_value()
             ? std::optional<Tensor>(torch::stable::to(*t, torch::stable::Device(torch::headeronly::DeviceType::CPU)))
             : std::nullopt;
}

// Raises the CPU op's ValueError (argument and flat index) for inputs the device found bad: the CPU kernel
// runs on host copies, so the message is the one CPU users see.
[[noreturn]] void raise_for_bad_values(const LossCall& call, int64_t count) {
  const LossCall on_cpu{*on_host(call.logp),    *on_host(call.old_logp), *on_host(call.advantages), on_host(call.mask),
                        on_host(call.ref_logp), on_host(call.lower),     on_host(call.upper),       call.options};
  const LossArgs host = loss_args(on_cpu);
  rethrow_as_value_error([&] { band_loss_forward_cpu(host.inputs, call.options); });
  raise_value_error(cat("band_loss: ", count, " valid positions hold NaN or out-of-range values"));
}

void band_bounds_cuda_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const BoundsCall b = unbox_bounds_call(stack, num_args, num_outputs);
  const Tensor& in = b.old_logp;
  const torch::stable::accelerator::DeviceGuard device_guard(in.get_device_index());
  Tensor lower = empty_like_contiguous(in), upper = empty_like_contiguous(in);
  rethrow_as_value_error([&] {
    const size_t bytes = cuda::bounds_workspace_bytes(b.dtype, b.options);
    const std::optional<Tensor> ws = bytes > 0 ? std::optional<Tensor>(workspace(bytes, in)) : std::nullopt;
    cuda::band_bounds(b.dtype, in.data_ptr(), in.numel(), b.options, lower.data_ptr(), upper.data_ptr(),
                      cuda::DeviceBuffer{ws ? ws->data_ptr() : nullptr, bytes}, current_stream(in));
  });
  stack[0] = from(lower);
  stack[1] = from(upper);
}

void band_loss_cuda_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LossCall call = unbox_loss_call(stack, num_args, num_outputs);
  const Tensor& logp = call.logp;
  const torch::stable::accelerator::DeviceGuard device_guard(logp.get_device_index());
  const LossArgs args = loss_args(call);
  Tensor loss = empty_on({}, scalar_type(args.inputs.dtype), logp);
  Tensor metrics = empty_on({kNumMetrics}, ScalarType::Float, logp);
  const bool check = input_checks_enabled();
  std::optional<Tensor> invalid;
  if (check) invalid = empty_on({1}, ScalarType::Long, logp);
  const size_t bytes = cuda::loss_workspace_bytes(args.inputs, call.options);
  Tensor ws = workspace(bytes, logp);
  rethrow_as_value_error([&] {
    cuda::band_loss_forward(args.inputs, call.options, loss.data_ptr(), static_cast<float*>(metrics.data_ptr()),
                            check ? static_cast<int64_t*>(invalid->data_ptr()) : nullptr,
                            cuda::DeviceBuffer{ws.data_ptr(), bytes}, current_stream(logp));
  });
  if (check) {
    const Tensor count = *on_host(invalid);  // the synchronisation the user asked for
    const int64_t n = *static_cast<const int64_t*>(count.data_ptr());
    if (n > 0) raise_for_bad_values(call, n);
  }
  stack[0] = from(in_logp_dtype(loss, args));
  stack[1] = from(metrics);
}

void band_loss_backward_cuda_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const BackwardCall b = unbox_backward_call(stack, num_args, num_outputs);
  const Tensor& grad_loss = b.grad_loss;
  const Tensor& logp = b.call.logp;
  const LossOptions& options = b.call.options;
  const torch::stable::accelerator::DeviceGuard device_guard(logp.get_device_index());
  const LossArgs args = loss_args(b.call);
  BANDPO_CHECK_VALUE(grad_loss.device() == logp.device(), "grad_loss is on ", device_name(grad_loss),
                     " but logp is on ", device_name(logp));
  // The incoming gradient stays on the device: converted there, read by the scale kernel.
  const Tensor g = as_contiguous(torch::stable::to(grad_loss, ScalarType::Double));
  Tensor grad = empty_like_contiguous(*args.logp);
  const size_t bytes = cuda::loss_workspace_bytes(args.inputs, options);
  Tensor ws = workspace(bytes, logp);
  rethrow_as_value_error([&] {
    cuda::band_loss_backward(args.inputs, options, cuda::DeviceScalar{g.data_ptr(), DType::float64}, grad.data_ptr(),
                             cuda::DeviceBuffer{ws.data_ptr(), bytes}, current_stream(logp));
  });
  stack[0] = from(in_logp_dtype(grad, args));
}

// logit_chunk_stats / logit_chunk_grad_ (schemas.cpp), as on the CPU; raw may also be bfloat16 or float16.
DType logit_dtype(const Tensor& raw) {
  switch (raw.scalar_type()) {
    case ScalarType::BFloat16:
      return DType::bfloat16;
    case ScalarType::Half:
      return DType::float16;
    default:
      return DType::float32;
  }
}

void logit_chunk_stats_cuda_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LogitChunkCall call = unbox_logit_stats(stack, num_args, num_outputs, true);
  const torch::stable::accelerator::DeviceGuard device_guard(call.raw.get_device_index());
  const int64_t rows = call.chunk.rows;
  Tensor logp = empty_on({rows}, ScalarType::Float, call.raw), entropy = empty_on({rows}, ScalarType::Float, call.raw);
  rethrow_as_value_error([&] {
    cuda::logit_stats(logit_dtype(call.raw), call.raw.data_ptr(), call.chunk, call.options,
                      static_cast<float*>(logp.data_ptr()), static_cast<float*>(entropy.data_ptr()),
                      current_stream(call.raw));
  });
  stack[0] = from(logp);
  stack[1] = from(entropy);
}

void logit_chunk_grad__cuda_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LogitChunkCall call = unbox_logit_grad(stack, num_args, num_outputs, true);
  const torch::stable::accelerator::DeviceGuard device_guard(call.raw.get_device_index());
  rethrow_as_value_error([&] {
    cuda::logit_grad(logit_dtype(call.raw), call.raw.data_ptr(), call.chunk, call.options, call.grads,
                     current_stream(call.raw));
  });
}

}  // namespace

#define BANDPO_IMPL_CUDA(op) m.impl(#op, &op##_cuda_boxed);
STABLE_TORCH_LIBRARY_IMPL(bandpo, CUDA, m) { BANDPO_KERNEL_OPS(BANDPO_IMPL_CUDA) }
#undef BANDPO_IMPL_CUDA

}  // namespace bandpo
