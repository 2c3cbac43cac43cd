// band_bounds on the device: an elementwise kernel over 16-byte chunks of old_logp, calling the same
// per-token token_bounds() as the CPU loops; "kl" in float reads the call's table (kl_table.cuh), built first.
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../checks.h"
#include "../dispatch.h"
#include "bandpo/bounds.h"
#include "bandpo/cuda.h"
#include "common.cuh"
#include "kl_table.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

// The table variants' registers held down for occupancy: float to 32 (8 blocks per multiprocessor, as the closed
// forms; 33 otherwise, which leaves 6), the 2-byte types' 8-token chunks to 48 (bfloat16 took 92, 2 blocks;
// they spill at 32). ptxas -v, sm_90, no spills at these limits.
template <class T, Divergence kDiv, bool kTable>
__global__ void __launch_bounds__(kBlockThreads, kTable ? (sizeof(T) == 4 ? 8 : 5) : 1)
    bounds_kernel(const T* __restrict__ old_logp, int64_t n, BoundParams<typename ComputeType<T>::type> prm,
                  DeviceKlTable kl_table, const int* run_if_refused, bool aligned, T* __restrict__ lower,
                  T* __restrict__ upper) {
  using C = typename ComputeType<T>::type;
  constexpr int N = kChunk<T>;
  prm.divergence = kDiv;  // a compile-time constant for the optimiser
  if (!use_kl_table<kTable>(prm, kl_table, run_if_refused)) return;
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

namespace {

// table_workspace: where a call with a workspace builds its KL table when the device's cache cannot serve it; null
// for the overload without one, which then solves (enqueue_kl_table enqueues nothing where a call reads no table).
void band_bounds_impl(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower,
                      void* upper, void* table_workspace, cudaStream_t stream) {
  if (n == 0) return;
  bandpo::detail::with_storage_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeType<T>::type;
    constexpr int N = detail::kChunk<T>;
    const detail::DeviceKlTable kl_table = detail::enqueue_kl_table(dtype, options, table_workspace, stream);
    const bool aligned =
        detail::is_aligned(old_logp, 16) && detail::is_aligned(lower, 16) && detail::is_aligned(upper, 16);
    const int blocks =
        detail::grid_blocks((n + int64_t(detail::kBlockThreads) * N - 1) / (int64_t(detail::kBlockThreads) * N));
    bandpo::detail::with_divergence(options.divergence, [&](auto div) {
      constexpr Divergence kDiv = decltype(div)::value;
      detail::launch_with_kl_table(kl_table, blocks, [&](auto table, const int* run_if_refused, int grid) {
        // the table variant exists for float KL only (launch_with_kl_table takes it only when there is a table)
        if constexpr (!decltype(table)::value || (kDiv == Divergence::kl && std::is_same<C, float>::value)) {
          detail::bounds_kernel<T, kDiv, decltype(table)::value><<<grid, detail::kBlockThreads, 0, stream>>>(
              static_cast<const T*>(old_logp), n, to_params<C>(options), kl_table, run_if_refused, aligned,
              static_cast<T*>(lower), static_cast<T*>(upper));
        }
      });
    });
  });
  detail::throw_if_launch_failed("band_bounds");
}

}  // namespace

size_t bounds_workspace_bytes(DType dtype, const BoundOptions& options) {
  validate(options);
  return detail::kl_table_bytes(dtype, options);
}

void band_bounds(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower, void* upper,
                 DeviceBuffer workspace, cudaStream_t stream) {
  bandpo::detail::check_bounds_call(dtype, old_logp, n, options, lower, upper, "band_bounds");
  const size_t needed = detail::kl_table_bytes(dtype, options);
  if (needed == 0) return band_bounds_impl(dtype, old_logp, n, options, lower, upper, nullptr, stream);
  if (workspace.data == nullptr || workspace.bytes < needed || !detail::is_aligned(workspace.data, 16))
    throw std::invalid_argument("band_bounds: workspace must be a 16-byte aligned device buffer of at least " +
                                std::to_string(needed) + " bytes (bounds_workspace_bytes()); got " +
                                std::to_string(workspace.bytes));
  band_bounds_impl(dtype, old_logp, n, options, lower, upper, workspace.data, stream);
}

void band_bounds(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower, void* upper,
                 cudaStream_t stream) {
  bandpo::detail::check_bounds_call(dtype, old_logp, n, options, lower, upper, "band_bounds");
  band_bounds_impl(dtype, old_logp, n, options, lower, upper, nullptr, stream);
}

}  // namespace cuda
}  // namespace bandpo
