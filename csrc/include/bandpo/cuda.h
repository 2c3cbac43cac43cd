// CUDA entry points of the core library on raw device buffers (contiguous, row-major) and a stream.
// No torch, no Python; link bandpo::bandpo built with CUDA.
//
// Every function only enqueues work on `stream`: none allocates, copies to the host or synchronises, so all
// of them can be captured in a CUDA graph. Reductions are deterministic: the same inputs on the same device
// give the same bits on every run (fixed partition into tiles, fixed reduction order, no float atomics).
// Errors in the arguments or the launch throw std::invalid_argument / std::runtime_error.
//
// Bad values in the data (token_loss.h bad_token: NaN at a valid position, a log-probability above 0, an
// infinite advantage) cannot raise without a synchronisation: the forward then writes NaN to the loss and
// the metrics, and their count to `invalid_count` (when not null), for the caller to check when it chooses to
// synchronise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {
namespace cuda {

// A device buffer the caller allocates for a call's scratch data (CUB's pattern: its size comes from the
// matching *_workspace_bytes query; 16-byte aligned). Nothing in it outlives the call's work on the stream.
struct DeviceBuffer {
  void* data = nullptr;
  size_t bytes = 0;
};

// One value of a float dtype in device memory (band_loss_backward's incoming gradient), read on the device.
struct DeviceScalar {
  const void* data = nullptr;
  DType dtype = DType::float64;
};

// Device workspace (bytes) that band_bounds needs for these options: 0, except for "kl" on float32, bfloat16
// and float16, where the call first builds the per-delta table the bounds are read from (kl_table.h; about
// 260 KB at delta = 0.05, at most about 360 KB).
size_t bounds_workspace_bytes(DType dtype, const BoundOptions& options);

// lower/upper[i] = Band bounds of old_logp[i] for n tokens of `dtype` (device pointers). `workspace`: at least
// bounds_workspace_bytes() (may be empty where that is 0).
void band_bounds(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower, void* upper,
                 DeviceBuffer workspace, cudaStream_t stream);

// The same without a workspace: "kl" then solves for every token (exact, several times slower on float inputs).
void band_bounds(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower, void* upper,
                 cudaStream_t stream);

// Device workspace (bytes) that band_loss_forward / band_loss_backward need for this shape and options.
size_t loss_workspace_bytes(const LossInputs& inputs, const LossOptions& options);

// Forward. Writes the aggregated loss (one value of inputs.dtype) to `loss`, kNumMetrics floats (order: the
// Metric enum) to `metrics`, and, if not null, the number of valid positions holding bad values to
// `invalid_count` (one int64). `workspace`: at least loss_workspace_bytes().
void band_loss_forward(const LossInputs& inputs, const LossOptions& options, void* loss, float* metrics,
                       int64_t* invalid_count, DeviceBuffer workspace, cudaStream_t stream);

// Backward: grad_logp (inputs.dtype, rows * cols) = grad_loss * d loss / d logp, where grad_loss is one value in
// device memory (so that the incoming gradient is never read on the host), of any float dtype.
void band_loss_backward(const LossInputs& inputs, const LossOptions& options, DeviceScalar grad_loss, void* grad_logp,
                        DeviceBuffer workspace, cudaStream_t stream);

// The lm_head statistics of one chunk of raw logits on the device, the CUDA side of cpu.h logit_stats_cpu /
// logit_grad_cpu (same transform, outputs and gradient): raw of `dtype` (float32, bfloat16 or float16: the
// GEMM's output as it is), its rows as `chunk` says; logp, entropy and the LogitRowGrads float32 [rows]. A target
// neither in [0, vocab) nor ignore_index gives NaN in its row (the device cannot raise without a
// synchronisation). One block per row, rows < 2^31.
void logit_stats(DType dtype, const void* raw, const LogitChunk& chunk, const LogitOptions& options, float* logp,
                 float* entropy, cudaStream_t stream);

// Overwrites raw with d loss / d raw (in raw's dtype); without the rows' logp and entropy in `grads`, each row
// is read twice instead of once.
void logit_grad(DType dtype, void* raw, const LogitChunk& chunk, const LogitOptions& options,
                const LogitRowGrads& grads, cudaStream_t stream);

}  // namespace cuda
}  // namespace bandpo
