// The CPU kernels of torch.ops.bandpo (schemas.cpp): boxed calls into the torch-free core (bandpo/cpu.h),
// with the outputs allocated here.
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "args.h"
#include "bandpo/cpu.h"

namespace bandpo {
namespace {

using torch::stable::detail::from;
using torch::stable::detail::to;

// torch.set_num_threads() decides the thread count. The items run on the core library's pool, not on
// torch's parallel_for: results must not depend on how torch splits work, and building with OpenMP would
// load a second OpenMP runtime beside torch's.
ParallelFor torch_parallel_for() {
  return thread_pool_parallel_for(static_cast<int>(torch::stable::get_num_threads()));
}

// A fresh output of several MiB is written once, in full: with 4 KiB pages its first touch costs more than
// the kernel itself on small machines (measured 1M float32 band_bounds: ~1.5 ms of faults vs ~3.5 ms of
// math). Where Linux transparent huge pages are in "madvise" mode, asking for them on the 2 MiB-aligned
// interior cuts the faults 512-fold. Advisory only: nothing changes if the kernel declines.
Tensor empty_output(const Tensor& like) {
  Tensor t = empty_like_contiguous(like);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(t.numel()) * t.element_size()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

// band_bounds(Tensor old_logp, *, <bound options>) -> (Tensor, Tensor)
void band_bounds_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const BoundsCall b = unbox_bounds_call(stack, num_args, num_outputs);
  Tensor lower = empty_output(b.old_logp), upper = empty_output(b.old_logp);
  rethrow_as_value_error([&] {
    band_bounds_cpu(b.dtype, b.old_logp.data_ptr(), b.old_logp.numel(), b.options, lower.data_ptr(), upper.data_ptr(),
                    torch_parallel_for());
  });
  stack[0] = from(lower);
  stack[1] = from(upper);
}

// band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, Tensor? ref_logp, Tensor? lower,
//           Tensor? upper, *, <loss options>) -> (Tensor loss, Tensor metrics)
void band_loss_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LossCall call = unbox_loss_call(stack, num_args, num_outputs);
  const Tensor& logp = call.logp;
  const LossArgs args = loss_args(call);
  const LossResult r =
      rethrow_as_value_error([&] { return band_loss_forward_cpu(args.inputs, call.options, torch_parallel_for()); });
  Tensor loss = empty_on({}, scalar_type(args.inputs.dtype), logp);
  store_as(args.inputs.dtype, loss.data_ptr(), r.loss);  // rounded as the core's writers round
  Tensor metrics = empty_on({kNumMetrics}, ScalarType::Float, logp);
  std::copy(r.metrics, r.metrics + kNumMetrics, static_cast<float*>(metrics.data_ptr()));
  stack[0] = from(in_logp_dtype(loss, args));
  stack[1] = from(metrics);
}

// band_loss_backward(Tensor grad_loss, <band_loss's tensors>, *, <loss options>) -> Tensor
void band_loss_backward_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const BackwardCall b = unbox_backward_call(stack, num_args, num_outputs);
  const LossOptions& options = b.call.options;
  const LossArgs args = loss_args(b.call);
  const Tensor g = torch::stable::to(b.grad_loss, ScalarType::Double);
  const double grad_value = *static_cast<const double*>(g.data_ptr());
  Tensor grad = empty_output(*args.logp);
  rethrow_as_value_error(
      [&] { band_loss_backward_cpu(args.inputs, options, grad_value, grad.data_ptr(), torch_parallel_for()); });
  stack[0] = from(in_logp_dtype(grad, args));
}

void logit_chunk_stats_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LogitChunkCall call = unbox_logit_stats(stack, num_args, num_outputs, false);
  const int64_t rows = call.chunk.rows;
  Tensor logp = empty_on({rows}, ScalarType::Float, call.raw), entropy = empty_on({rows}, ScalarType::Float, call.raw);
  rethrow_as_value_error([&] {
    logit_stats_cpu(static_cast<const float*>(call.raw.data_ptr()), call.chunk, call.options,
                    static_cast<float*>(logp.data_ptr()), static_cast<float*>(entropy.data_ptr()),
                    torch_parallel_for());
  });
  stack[0] = from(logp);
  stack[1] = from(entropy);
}

void logit_chunk_grad__cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const LogitChunkCall call = unbox_logit_grad(stack, num_args, num_outputs, false);
  rethrow_as_value_error([&] {
    logit_grad_cpu(static_cast<float*>(call.raw.data_ptr()), call.chunk, call.options, call.grads,
                   torch_parallel_for());
  });
}

}  // namespace

#define BANDPO_IMPL_CPU(op) m.impl(#op, &op##_cpu_boxed);
STABLE_TORCH_LIBRARY_IMPL(bandpo, CPU, m) { BANDPO_KERNEL_OPS(BANDPO_IMPL_CPU) }
#undef BANDPO_IMPL_CPU

}  // namespace bandpo
