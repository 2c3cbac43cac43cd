// Internal: the float Band-KL table (kl_table.h) on the device, built for each call in the call's workspace.
//
// The CPU drivers build a table once per delta and keep it; a device call cannot (a persistent device buffer
// would need an allocation, and a cache a host sync to learn whether the build passed its check). So each call
// that reads one enqueues its build first: one thread per exact float64 solve (about 29k at delta = 0.05, a
// few microseconds), then the same fit and check as the CPU's (kl_table_build.h). A table that fails its check
// sets a flag in the workspace; the kernels read it first and then solve exactly (the fallback the CPU takes,
// decided on the device, without a sync).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "bandpo/bounds.h"
#include "bandpo/dtypes.h"
#include "bandpo/options.h"

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

// Enqueues the build of the table into `workspace` (kl_table_bytes() of it, 16-byte aligned) on `stream`.
// Where kl_table_bytes() is 0, enqueues nothing and returns no table.
DeviceKlTable enqueue_kl_table(DType dtype, const BoundOptions& options, void* workspace, cudaStream_t stream);

// In a kernel, before the token loop: the params with the call's table, or without it where the check refused it.
template <class C>
__device__ __forceinline__ void use_kl_table(BoundParams<C>& prm, const DeviceKlTable& t) {
  prm.kl_table = t.table;
  if (t.table.coeffs != nullptr && *t.refused != 0) prm.kl_table.coeffs = nullptr;
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
