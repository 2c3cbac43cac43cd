// The device build of the float Band-KL table (kl_table.cuh): the builder functions of kl_table_build.h, one
// thread per exact solve; and the per-device cache of built tables.
#include "kl_table.cuh"

#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kl_table_cache.h"
#include "bandpo/kl_table_build.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

constexpr int kIntervalsPerBlock = 16;
constexpr int kBuildThreads = kIntervalsPerBlock * kKlTablePointsPerInterval * 2;  // one per point and side
constexpr size_t kFlagBytes = 256;  // the refusal flag, padded so that the coefficients stay 256-byte aligned

size_t round_up(size_t b) { return (b + 255) / 256 * 256; }

// Block b holds table indices 16 b .. 16 b + 15. First every thread solves one side at one point of one interval
// (the two limit intervals, 0 and the last, solve at the grid end they are checked at), into shared memory;
// then four threads per interval fit and check one function each (one thread a whole limit interval).
__global__ void __launch_bounds__(kBuildThreads)
    build_kl_table_kernel(KlTableLayout l, double delta, double max_error, float* __restrict__ coeffs,
                          int* __restrict__ refused) {
  __shared__ KlTableValues values[kIntervalsPerBlock * kKlTablePointsPerInterval];
  const int32_t first = static_cast<int32_t>(blockIdx.x) * kIntervalsPerBlock;
  const int32_t size = l.size();
  {
    const bool upper_side = (threadIdx.x & 1) != 0;
    const int slot = static_cast<int>(threadIdx.x >> 1);  // local interval * points + point
    const int32_t index = first + slot / kKlTablePointsPerInterval;
    const int point = slot % kKlTablePointsPerInterval;
    const bool limit = index == 0 || index == size - 1;
    if ((index >= 1 && index <= size - 2) || (limit && point == 0)) {
      const double lp = limit ? kl_table_limit_logp(l, index) : kl_table_point_logp(l, index, point);
      const KlTableSide side = kl_table_exact_side(lp, delta, upper_side);
      if (upper_side) {
        values[slot].upper = side.value;
        values[slot].log_upper = side.log_value;
      } else {
        values[slot].lower = side.value;
        values[slot].log_lower = side.log_value;
      }
    }
  }
  __syncthreads();
  const int local = static_cast<int>(threadIdx.x >> 2), fn = static_cast<int>(threadIdx.x & 3);
  const int32_t index = first + local;
  if (local >= kIntervalsPerBlock || index >= size) return;
  const KlTableValues* at_points = &values[local * kKlTablePointsPerInterval];
  double error;
  if (index == 0 || index == size - 1) {
    if (fn != 0) return;
    float c[kKlTableCoeffs];
    kl_table_fill_limit(l, index, delta, c);
    error = kl_table_limit_error(l, index, c, at_points[0]);
#pragma unroll
    for (int r = 0; r < kKlTableCoeffs; r += 4)
      *reinterpret_cast<float4*>(coeffs + kl_table_at(l, index, r)) = make_float4(c[r], c[r + 1], c[r + 2], c[r + 3]);
  } else {
    float c[4];
    kl_table_fit_function(l, index, fn, at_points, c);
    error = kl_table_function_error(l, index, fn, at_points, c);
    *reinterpret_cast<float4*>(coeffs + kl_table_at(l, index, 4 * fn)) = make_float4(c[0], c[1], c[2], c[3]);
  }
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

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) detail::throw_cuda_error(what, err);
}

// The table's view of a buffer of kl_table_bytes(): the flag first, then the coefficients.
DeviceKlTable table_in(void* buffer, const KlTableLayout& l) {
  return DeviceKlTable{KlTable{reinterpret_cast<float*>(static_cast<char*>(buffer) + kFlagBytes), l},
                       static_cast<const int*>(buffer)};
}

// Enqueues the build of delta's table into `buffer` on `stream`.
DeviceKlTable enqueue_build(double delta, void* buffer, cudaStream_t stream) {
  const KlTableLayout l = kl_table_layout(delta);
  const DeviceKlTable t = table_in(buffer, l);
  int* refused = static_cast<int*>(buffer);
  check(cudaMemsetAsync(refused, 0, sizeof(int), stream), "resetting the KL table's flag");
  const int blocks = (l.size() + kIntervalsPerBlock - 1) / kIntervalsPerBlock;
  // BANDPO_KL_TABLE=refuse: a limit no table meets (every check fails, the kernels solve)
  const double max_error =
      bandpo::detail::kl_table_mode() == bandpo::detail::KlTableMode::refuse ? -1.0 : kKlTableMaxError;
  build_kl_table_kernel<<<blocks, kBuildThreads, 0, stream>>>(l, delta, max_error, const_cast<float*>(t.table.coeffs),
                                                              refused);
  throw_if_launch_failed("the KL table build");
  bandpo::detail::count_kl_table_build();
  return t;
}

struct CachedTable {
  int device;
  double delta;
  void* buffer;       // kl_table_bytes(), never freed (kl_table.cuh)
  cudaEvent_t built;  // recorded after the build, on the stream of the call that built it
};

// The cached table of (device, delta), ready in `stream`'s order; built on a miss. Null where the cache cannot
// serve this call (capture, a full cache, an allocation that failed): the caller builds in its workspace.
const CachedTable* cached_table(double delta, size_t bytes, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &capture), "asking whether the stream is being captured");
  if (capture != cudaStreamCaptureStatusNone) return nullptr;
  int device = 0;
  check(cudaStreamGetDevice(stream, &device), "finding the stream's device");
  static std::mutex mutex;
  static std::vector<CachedTable>* cache = new std::vector<CachedTable>();  // never destroyed: see above
  std::lock_guard<std::mutex> lock(mutex);
  int on_device = 0;
  for (const CachedTable& c : *cache) {
    if (c.device != device) continue;
    if (c.delta == delta) {
      // the build may still be queued on another stream: order this one after it (a device-side wait)
      check(cudaStreamWaitEvent(stream, c.built, 0), "waiting for the KL table's build");
      return &c;
    }
    ++on_device;
  }
  if (on_device >= kDeviceKlTableCacheSize) return nullptr;
  CachedTable entry{device, delta, nullptr, nullptr};
  if (cudaMalloc(&entry.buffer, bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky: clear it, and build in the workspace
    return nullptr;
  }
  check(cudaEventCreateWithFlags(&entry.built, cudaEventDisableTiming), "creating the KL table's event");
  enqueue_build(delta, entry.buffer, stream);
  check(cudaEventRecord(entry.built, stream), "recording the KL table's build");
  cache->push_back(entry);
  return &cache->back();
}

}  // namespace

DeviceKlTable enqueue_kl_table(DType dtype, const BoundOptions& options, void* workspace, cudaStream_t stream) {
  const size_t bytes = kl_table_bytes(dtype, options);
  if (bytes == 0) return DeviceKlTable{KlTable{nullptr, KlTableLayout{}}, nullptr};
  if (const CachedTable* c = cached_table(options.delta, bytes, stream))
    return table_in(c->buffer, kl_table_layout(options.delta));
  if (workspace == nullptr) return DeviceKlTable{KlTable{nullptr, KlTableLayout{}}, nullptr};
  return enqueue_build(options.delta, workspace, stream);
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
