// The device build of the float Band-KL table (kl_table.cuh): the builder functions of kl_table_build.h, one
// thread per exact solve.
#include "kl_table.cuh"

#include <stdexcept>
#include <string>

#include "../kl_table_cache.h"
#include "bandpo/kl_table_build.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

constexpr int kIntervalsPerBlock = 32;
constexpr int kBuildThreads = kIntervalsPerBlock * kKlTablePointsPerInterval;
constexpr size_t kFlagBytes = 256;  // the refusal flag, padded so that the coefficients stay 256-byte aligned

size_t round_up(size_t b) { return (b + 255) / 256 * 256; }

// Block b holds table indices 32 b .. 32 b + 31: first every thread solves one point of one interval (into
// shared memory), then one thread per interval fits its cubics and checks them. The two limit intervals (0 and
// the last) are filled from the limits and checked against a solve at the grid's end.
__global__ void __launch_bounds__(kBuildThreads)
    build_kl_table_kernel(KlTableLayout l, double delta, double max_error, float* __restrict__ coeffs,
                          int* __restrict__ refused) {
  __shared__ KlTableValues values[kBuildThreads];
  const int32_t first = static_cast<int32_t>(blockIdx.x) * kIntervalsPerBlock;
  const int32_t size = l.size();
  {
    const int32_t index = first + static_cast<int32_t>(threadIdx.x) / kKlTablePointsPerInterval;
    const int point = static_cast<int>(threadIdx.x) % kKlTablePointsPerInterval;
    if (index >= 1 && index <= size - 2) values[threadIdx.x] = kl_table_exact(kl_table_point_logp(l, index, point), delta);
  }
  __syncthreads();
  const int32_t index = first + static_cast<int32_t>(threadIdx.x);
  if (threadIdx.x >= kIntervalsPerBlock || index >= size) return;
  float c[kKlTableCoeffs];
  double error;
  if (index == 0 || index == size - 1) {
    kl_table_fill_limit(l, index, delta, c);
    error = kl_table_limit_error(l, index, delta, c);
  } else {
    const KlTableValues* at_points = &values[threadIdx.x * kKlTablePointsPerInterval];
    kl_table_fit(l, index, at_points, c);
    error = kl_table_interval_error(l, index, at_points, c);
  }
#pragma unroll
  for (int r = 0; r < kKlTableCoeffs; r += 4)
    *reinterpret_cast<float4*>(coeffs + kl_table_at(l, index, r)) = make_float4(c[r], c[r + 1], c[r + 2], c[r + 3]);
  // An integer OR: the same flag whatever the order (NaN errors refuse too).
  if (!(error <= max_error)) atomicOr(refused, 1);
}

}  // namespace

size_t kl_table_bytes(DType dtype, const BoundOptions& options) {
  if (options.divergence != Divergence::kl || dtype == DType::float64 ||
      bandpo::detail::kl_table_mode() == bandpo::detail::KlTableMode::off)
    return 0;
  const KlTableLayout l = kl_table_layout(options.delta);
  return kFlagBytes + round_up(static_cast<size_t>(l.size()) * kKlTableCoeffs * sizeof(float));
}

DeviceKlTable enqueue_kl_table(DType dtype, const BoundOptions& options, void* workspace, cudaStream_t stream) {
  if (kl_table_bytes(dtype, options) == 0) return DeviceKlTable{KlTable{nullptr, KlTableLayout{}}, nullptr};
  const KlTableLayout l = kl_table_layout(options.delta);
  int* refused = static_cast<int*>(workspace);
  float* coeffs = reinterpret_cast<float*>(static_cast<char*>(workspace) + kFlagBytes);
  const cudaError_t err = cudaMemsetAsync(refused, 0, sizeof(int), stream);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("bandpo: resetting the KL table's flag failed: ") + cudaGetErrorString(err));
  const int blocks = (l.size() + kIntervalsPerBlock - 1) / kIntervalsPerBlock;
  // BANDPO_KL_TABLE=refuse: a limit no table meets (every check fails, the kernels solve)
  const double max_error = bandpo::detail::kl_table_mode() == bandpo::detail::KlTableMode::refuse ? -1.0 : kKlTableMaxError;
  build_kl_table_kernel<<<blocks, kBuildThreads, 0, stream>>>(l, options.delta, max_error, coeffs, refused);
  throw_if_launch_failed("the KL table build");
  return DeviceKlTable{KlTable{coeffs, l}, refused};
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
