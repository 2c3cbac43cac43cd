// Internal: what the CUDA kernels of the core share: launch shape, 16-byte chunk loads/stores, the tiling of
// a [rows, cols] problem into deterministic reduction units, warp/block reductions of SegmentSums.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../aggregation.h"
#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"

namespace bandpo {
namespace cuda {
namespace detail {

using bandpo::detail::SegmentSums;

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;
constexpr int kWarpsPerBlock = kBlockThreads / kWarpSize;
constexpr unsigned kFullWarp = 0xffffffffu;

// Elements per thread per step: one 16-byte load of each input.
template <class T>
constexpr int kChunk = 16 / static_cast<int>(sizeof(T));

// Throws std::runtime_error naming `what` if the last launch failed (a launch error is sticky only for
// the failed launch; this reads and clears it).
void throw_if_launch_failed(const char* what);
// Throws "bandpo: WHAT failed: ..."; for a driver older than the runtime, the message names the driver needed.
[[noreturn]] void throw_cuda_error(const char* what, cudaError_t err);

// Number of blocks for a grid-stride kernel over `work_blocks` blocks' worth of work: enough to fill the
// current device several times over, never more than the work.
int grid_blocks(int64_t work_blocks);

// Blocks of a kernel launched only in case a call's KL table is refused (kl_table.cuh): one per multiprocessor,
// which costs little when it exits at once (always, for a valid delta) and still covers any size grid-stride.
int fallback_blocks();

// The unsigned type of a vector load or store of Bytes bytes (16, 8, 4 or 2).
template <int Bytes>
using Word =
    std::conditional_t<Bytes == 16, uint4,
                       std::conditional_t<Bytes == 8, uint2, std::conditional_t<Bytes == 4, uint32_t, uint16_t>>>;
static_assert(sizeof(Word<16>) == 16 && sizeof(Word<8>) == 8 && sizeof(Word<4>) == 4 && sizeof(Word<2>) == 2);

// out[j] = p[i + j] for i + j < end (one vector load when `aligned` and the chunk is whole); elements past
// `end` are zero bits. `aligned`: p and i are multiples of N elements and p is N * sizeof(T)-byte aligned.
template <int N, class T>
__device__ __forceinline__ void load_chunk(const T* __restrict__ p, int64_t i, int64_t end, bool aligned, T (&out)[N]) {
  if (aligned && i + N <= end) {
    using W = Word<N * sizeof(T)>;
    const W w = *reinterpret_cast<const W*>(p + i);
    memcpy(out, &w, sizeof(W));
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (i + j < end) {
        out[j] = p[i + j];
      } else {
        memset(&out[j], 0, sizeof(T));
      }
    }
  }
}

template <int N, class T>
__device__ __forceinline__ void store_chunk(T* __restrict__ p, int64_t i, int64_t end, bool aligned, const T (&in)[N]) {
  if (aligned && i + N <= end) {
    using W = Word<N * sizeof(T)>;
    W w;
    memcpy(&w, in, sizeof(W));
    *reinterpret_cast<W*>(p + i) = w;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (i + j < end) p[i + j] = in[j];
    }
  }
}

inline bool is_aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The reduction units of a [rows, cols] problem: tiles of at most `tile` tokens of one row. Each unit's
// partial sums are computed by one warp and stored at its index, so the result never depends on the grid
// or on scheduling. When no per-row quantity is needed the problem is one flat row. The tile length is a
// function of the problem size only (large enough to amortise a warp reduction, small enough to give
// every multiprocessor work at 1M tokens).
struct Tiling {
  // The tile grows from kMinTile (a multiple of 32 lanes x 8 elements, the bf16 chunk, so whole chunks stay
  // aligned) by doubling up to kMaxTile while the problem has more than kTargetTiles tiles.
  static constexpr int64_t kMinTile = 256;
  static constexpr int64_t kMaxTile = 2048;
  static constexpr int64_t kTargetTiles = 16384;

  int64_t rows = 0, cols = 0, tile = 0, tiles_per_row = 0, units = 0;

  static Tiling of(int64_t rows, int64_t cols, bool per_row) {
    Tiling t;
    const int64_t n = rows * cols;
    t.rows = per_row ? rows : (n > 0 ? 1 : 0);
    t.cols = per_row ? cols : n;
    t.tile = kMinTile;
    while (t.tile < kMaxTile && t.tile * kTargetTiles < n) t.tile *= 2;
    t.tiles_per_row = t.cols > 0 ? (t.cols + t.tile - 1) / t.tile : 0;
    t.units = t.rows * t.tiles_per_row;
    return t;
  }

  __host__ __device__ int64_t row(int64_t unit) const { return unit / tiles_per_row; }
  __host__ __device__ int64_t begin(int64_t unit) const { return row(unit) * cols + (unit % tiles_per_row) * tile; }
  __host__ __device__ int64_t end(int64_t unit) const {
    const int64_t r = row(unit);
    const int64_t stop = (unit % tiles_per_row + 1) * tile;
    return r * cols + (stop < cols ? stop : cols);
  }
};

// Units are dealt to warps grid-stride: warp w of the grid takes units w, w + (warps in the grid), ...
__device__ __forceinline__ int64_t first_warp_unit() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
}
__device__ __forceinline__ int64_t warp_unit_stride() { return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock; }

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ __forceinline__ int64_t warp_sum(int64_t v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ __forceinline__ SegmentSums warp_sum(SegmentSums s) {
#define BANDPO_WARP_SUM(kind, name) s.name = warp_sum(s.name);
  BANDPO_SEGMENT_SUM_FIELDS(BANDPO_WARP_SUM)
#undef BANDPO_WARP_SUM
  return s;
}

__device__ __forceinline__ void add_to(double& a, double b) { a += b; }
__device__ __forceinline__ void add_to(SegmentSums& a, const SegmentSums& b) { a.add(b); }

// Sum over the block (blockDim.x == kBlockThreads) in a fixed order; the result is valid in thread 0.
template <class V>
__device__ V block_sum(V v) {
  // Raw storage: a __shared__ array of a type with default member initialisers is not allowed.
  __shared__ alignas(V) unsigned char storage[kWarpsPerBlock * sizeof(V)];
  V* per_warp = reinterpret_cast<V*>(storage);
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) per_warp[warp] = v;
  __syncthreads();
  V total = per_warp[0];
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarpsPerBlock; ++w) add_to(total, per_warp[w]);
  }
  __syncthreads();
  return total;
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
