// CUDA kernels of the lm_head statistics (bandpo/cuda.h logit_stats, logit_grad): one block per row of raw
// logits, the per-element math of bandpo/lm_head.h (the CPU loops' own).
//
// Stats: one pass over the row (16-byte loads), each thread folding each load's logits into running sums
// (logit_sums_add, re-based at most once per load), then a fixed-order block reduction (logit_sums_merge):
// deterministic. Grad: with the row's logp and entropy given, one pass that reads each logit and writes its
// gradient in place; without them, the stats pass first. A target outside [0, vocab) (and not ignore_index) cannot raise without a host sync: its
// row gives NaN.
#include <cmath>
#include <stdexcept>
#include <string>

#include "bandpo/cuda.h"
#include "bandpo/lm_head.h"
#include "../checks.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

template <class T>
__device__ __forceinline__ float logit_to_float(T v) {
  return to_float(v);
}
template <>
__device__ __forceinline__ float logit_to_float<float>(float v) {
  return v;
}

template <class T>
__device__ __forceinline__ T logit_from_float(float v);
template <>
__device__ __forceinline__ float logit_from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ bfloat16 logit_from_float<bfloat16>(float v) {
  return from_float_bf16(v);
}
template <>
__device__ __forceinline__ float16 logit_from_float<float16>(float v) {
  return from_float_f16(v);
}

__device__ __forceinline__ LogitRowSums shuffle_sums(const LogitRowSums& x, int offset) {
  return LogitRowSums{__shfl_xor_sync(kFullWarp, x.max, offset), __shfl_xor_sync(kFullWarp, x.sum, offset),
                      __shfl_xor_sync(kFullWarp, x.moment, offset)};
}

// The block's sums, returned to every thread: warps by butterfly (every lane ends with the same value, in the
// same order on every run), then warp 0 over the warps' results in index order.
__device__ LogitRowSums block_sums(LogitRowSums x) {
  __shared__ LogitRowSums warp_sums[kWarpsPerBlock];
  __shared__ LogitRowSums total;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = logit_sums_merge(x, shuffle_sums(x, offset));
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    LogitRowSums t = warp_sums[0];
    for (int w = 1; w < kWarpsPerBlock; ++w) t = logit_sums_merge(t, warp_sums[w]);
    total = t;
  }
  __syncthreads();
  return total;
}

// The row's sums (every thread gets them).
// aligned: every row starts on a 16-byte boundary (checked on the host: raw and the row stride in bytes).
template <class T>
__device__ LogitRowSums row_sums(const T* row, int64_t vocab, bool aligned, const LogitTransform& t) {
  constexpr int N = kChunk<T>;
  LogitRowSums x{-INFINITY, 0.0f, 0.0f};
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < vocab; i += static_cast<int64_t>(blockDim.x) * N) {
    T v[N];
    load_chunk<N>(row, i, vocab, aligned, v);
    float z[N];
#pragma unroll
    for (int j = 0; j < N; ++j) z[j] = i + j < vocab ? logit_z(logit_to_float(v[j]), t) : -INFINITY;  // -inf: none
    x = logit_sums_add(x, z);
  }
  return block_sums(x);
}

__device__ __forceinline__ bool bad_target(int64_t target, int64_t vocab, int64_t ignore_index) {
  return target != ignore_index && (target < 0 || target >= vocab);
}

// What every row's block needs to know of the chunk (by value, in the kernel's parameters).
// aligned: every row starts on a 16-byte boundary (checked on the host: raw and the row stride in bytes).
struct RowsOf {
  LogitChunk chunk;
  bool aligned;
  int64_t ignore_index;
  LogitTransform t;
};

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    logit_stats_kernel(const T* __restrict__ raw, RowsOf rows, float* __restrict__ logp, float* __restrict__ entropy) {
  const int64_t vocab = rows.chunk.vocab, stride = rows.chunk.row_stride, ignore_index = rows.ignore_index;
  const bool aligned = rows.aligned;
  const LogitTransform& t = rows.t;
  const int64_t r = blockIdx.x;
  const int64_t tg = rows.chunk.target[r];
  if (tg == ignore_index || bad_target(tg, vocab, ignore_index)) {
    if (threadIdx.x == 0) logp[r] = entropy[r] = tg == ignore_index ? 0.0f : NAN;
    return;
  }
  const T* row = raw + r * stride;
  const LogitRowSums x = row_sums(row, vocab, aligned, t);
  if (threadIdx.x == 0) logit_outputs(x, logit_z(logit_to_float(row[tg]), t), logp[r], entropy[r]);
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    logit_grad_kernel(T* __restrict__ raw, RowsOf rows, LogitRowGrads grads) {
  constexpr int N = kChunk<T>;
  const int64_t vocab = rows.chunk.vocab, stride = rows.chunk.row_stride, ignore_index = rows.ignore_index;
  const bool aligned = rows.aligned;
  const LogitTransform& t = rows.t;
  const float* __restrict__ grad_logp = grads.grad_logp;
  const float* __restrict__ grad_entropy = grads.grad_entropy;
  const float* __restrict__ logp = grads.logp;
  const float* __restrict__ entropy = grads.entropy;
  const int64_t r = blockIdx.x;
  const int64_t tg = rows.chunk.target[r];
  T* row = raw + r * stride;
  const bool ignored = tg == ignore_index, bad = bad_target(tg, vocab, ignore_index);
  LogitRowGrad g{};
  float target_grad = 0.0f;
  if (!ignored && !bad) {
    const float gl = grad_logp ? grad_logp[r] : 0.0f, gh = grad_entropy ? grad_entropy[r] : 0.0f;
    const float raw_target = logit_to_float(row[tg]);
    g = logp && entropy ? logit_row_grad_from_outputs(logit_z(raw_target, t), logp[r], entropy[r], gl, gh)
                        : logit_row_grad_from_sums(row_sums(row, vocab, aligned, t), gl, gh);
    target_grad = logit_grad(raw_target, true, g, t);
  }
  __syncthreads();  // every thread has read the target's logit before any overwrites it
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < vocab; i += static_cast<int64_t>(blockDim.x) * N) {
    T v[N];
    load_chunk<N>(row, i, vocab, aligned, v);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float out = ignored       ? 0.0f
                        : bad         ? NAN
                        : i + j == tg ? target_grad
                                      : logit_grad(logit_to_float(v[j]), false, g, t);
      v[j] = logit_from_float<T>(out);
    }
    store_chunk<N>(row, i, vocab, aligned, v);
  }
}

bool rows_aligned(const void* raw, int64_t row_stride, size_t element_bytes) {
  return is_aligned(raw, 16) && (row_stride * static_cast<int64_t>(element_bytes)) % 16 == 0;
}

template <class F>
void with_logit_type(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::float32:
      return f(static_cast<float*>(nullptr));
    case DType::bfloat16:
      return f(static_cast<bfloat16*>(nullptr));
    case DType::float16:
      return f(static_cast<float16*>(nullptr));
    default:
      throw std::invalid_argument(std::string(op) + ": raw must be float32, bfloat16 or float16");
  }
}

}  // namespace
}  // namespace detail

void logit_stats(DType dtype, const void* raw, const LogitChunk& chunk, const LogitOptions& options, float* logp,
                 float* entropy, cudaStream_t stream) {
  bandpo::detail::check_logit_chunk("logit_stats", raw, chunk, options);
  if (chunk.rows > 0x7fffffff)
    throw std::invalid_argument("logit_stats: rows = " + std::to_string(chunk.rows) + " must be < 2^31");
  if (chunk.rows == 0) return;
  const LogitTransform t = make_logit_transform(options.logit_scale, options.softcap, options.temperature);
  detail::with_logit_type(dtype, "logit_stats", [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const detail::RowsOf rows{chunk, detail::rows_aligned(raw, chunk.row_stride, sizeof(T)), options.ignore_index, t};
    detail::logit_stats_kernel<T><<<static_cast<unsigned>(chunk.rows), detail::kBlockThreads, 0, stream>>>(
        static_cast<const T*>(raw), rows, logp, entropy);
  });
  detail::throw_if_launch_failed("logit_stats");
}

void logit_grad(DType dtype, void* raw, const LogitChunk& chunk, const LogitOptions& options,
                const LogitRowGrads& grads, cudaStream_t stream) {
  bandpo::detail::check_logit_chunk("logit_grad", raw, chunk, options);
  if (chunk.rows > 0x7fffffff)
    throw std::invalid_argument("logit_grad: rows = " + std::to_string(chunk.rows) + " must be < 2^31");
  bandpo::detail::check_logit_outputs("logit_grad", grads.logp, grads.entropy);
  if (chunk.rows == 0) return;
  const LogitTransform t = make_logit_transform(options.logit_scale, options.softcap, options.temperature);
  detail::with_logit_type(dtype, "logit_grad", [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const detail::RowsOf rows{chunk, detail::rows_aligned(raw, chunk.row_stride, sizeof(T)), options.ignore_index, t};
    detail::logit_grad_kernel<T>
        <<<static_cast<unsigned>(chunk.rows), detail::kBlockThreads, 0, stream>>>(static_cast<T*>(raw), rows, grads);
  });
  detail::throw_if_launch_failed("logit_grad");
}

}  // namespace cuda
}  // namespace bandpo
