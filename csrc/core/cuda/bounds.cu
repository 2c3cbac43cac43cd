// band_bounds on the device: an elementwise kernel over 16-byte chunks of old_logp, calling the same
// per-token token_bounds() as the CPU loops.
#include <stdexcept>

#include "../checks.h"
#include "../dispatch.h"
#include "bandpo/bounds.h"
#include "bandpo/cuda.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

template <class T, Divergence kDiv>
__global__ void __launch_bounds__(kBlockThreads)
    bounds_kernel(const T* __restrict__ old_logp, int64_t n, BoundParams<typename ComputeType<T>::type> prm,
                  bool aligned, T* __restrict__ lower, T* __restrict__ upper) {
  using C = typename ComputeType<T>::type;
  constexpr int N = kChunk<T>;
  prm.divergence = kDiv;  // a compile-time constant for the optimiser
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * N;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N; i < n; i += stride) {
    T in[N], lo[N], hi[N];
    load_chunk(old_logp, i, n, aligned, in);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const RatioBounds<C> b = token_bounds(load<C>(in, j), prm);
      store(lo, j, b.lower);
      store(hi, j, b.upper);
    }
    store_chunk(lower, i, n, aligned, lo);
    store_chunk(upper, i, n, aligned, hi);
  }
}

}  // namespace
}  // namespace detail

void band_bounds(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower,
                 void* upper, cudaStream_t stream) {
  bandpo::detail::check_bounds_call(dtype, old_logp, n, options, lower, upper, "band_bounds");
  if (n == 0) return;
  bandpo::detail::with_storage_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeType<T>::type;
    constexpr int N = detail::kChunk<T>;
    const bool aligned =
        detail::is_aligned(old_logp, 16) && detail::is_aligned(lower, 16) && detail::is_aligned(upper, 16);
    const int blocks = detail::grid_blocks((n + int64_t(detail::kBlockThreads) * N - 1) / (int64_t(detail::kBlockThreads) * N));
    bandpo::detail::with_divergence(options.divergence, [&](auto div) {
      detail::bounds_kernel<T, decltype(div)::value><<<blocks, detail::kBlockThreads, 0, stream>>>(
          static_cast<const T*>(old_logp), n, to_params<C>(options), aligned, static_cast<T*>(lower),
          static_cast<T*>(upper));
    });
  });
  detail::throw_if_launch_failed("band_bounds");
}

}  // namespace cuda
}  // namespace bandpo
