// Internal: the float Band-KL table (kl_table.h) on the device.
//
// Like the CPU drivers' tables (kl_table_cache.h), a device's table is built once per delta and kept: the first
// call with a delta on a device allocates it (cudaMalloc, once) and enqueues its build on the call's stream,
// with an event after it; later calls on any stream of that device only make their stream wait for that event
// (no host sync, no launch). The build: one thread per exact float64 solve (about 29k at delta = 0.05, a few
// microseconds), then the same fit and check as the CPU's (kl_table_build.h). A table that fails its check sets
// a flag beside it; the kernels read it first and then solve exactly (the fallback the CPU takes, decided on the
// device, without a sync).
//
// Where a call cannot use the cache it builds the table in its own workspace, as every call did before the
// cache: while its stream is being captured into a CUDA graph (a build recorded into a graph has not run, so it
// must not be cached; the graph rebuilds it at each replay), and for deltas past kDeviceKlTableCacheSize on one
// device (a schedule of many deltas then costs one build a call, never unbounded memory). Cached tables live
// as long as the process: freeing one would need to know that no queued kernel still reads it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <type_traits>

#include "bandpo/bounds.h"
#include "bandpo/dtypes.h"
#include "bandpo/options.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {

// A call's table: the view the kernels' BoundParams take, and the flag its check set (nonzero: refused).
struct DeviceKlTable {
  KlTable table;  // coeffs == nullptr: none (solve)
  const int* refused;
};

// Workspace bytes (a multiple of 256) of the table a call with these options and dtype reads: 0 where it reads
// none (not "kl", float64 inputs, or BANDPO_KL_TABLE=0; kl_table_cache.h).
size_t kl_table_bytes(DType dtype, const BoundOptions& options);

// Tables kept per device.
constexpr int kDeviceKlTableCacheSize = 8;

// The table the call reads, ready in `stream`'s order: the device's cached one (built now on a miss), or, where
// the cache cannot serve (above), built into `workspace` (kl_table_bytes() of it, 16-byte aligned) on `stream`.
// Where kl_table_bytes() is 0, or the cache cannot serve and `workspace` is null, returns no table (the kernels
// solve).
DeviceKlTable enqueue_kl_table(DType dtype, const BoundOptions& options, void* workspace, cudaStream_t stream);

// In a kernel, before the token loop. The kernels come in two variants per call that reads a table: kTable,
// compiled for the table alone (no solve in it: the registers and occupancy of the closed-form divergences),
// which does nothing when the table was refused; and the solving one, which then runs instead (launched with
// `run_if_refused` = the flag and fallback_blocks(); with null it always runs, where a call reads no table).
// Returns whether this kernel does the work.
template <bool kTable, class C>
__device__ __forceinline__ bool use_kl_table(BoundParams<C>& prm, const DeviceKlTable& t, const int* run_if_refused) {
  if constexpr (kTable) {
    if (*t.refused != 0) return false;
    prm.kl_table = t.table;
    if (prm.kl_table.coeffs == nullptr) __builtin_unreachable();  // launched with a table: lets the solve go
  } else {
    if (run_if_refused != nullptr && *run_if_refused == 0) return false;
    prm.kl_table.coeffs = nullptr;
  }
  return true;
}

// How a call launches its token kernels: launch(kTable, run_if_refused, blocks).
template <class Launch>
void launch_with_kl_table(const DeviceKlTable& t, int blocks, Launch&& launch) {
  if (t.table.coeffs != nullptr) {
    launch(std::true_type{}, nullptr, blocks);
    launch(std::false_type{}, t.refused, blocks < fallback_blocks() ? blocks : fallback_blocks());
  } else {
    launch(std::false_type{}, nullptr, blocks);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
