// CPU entry points of the core library on raw, contiguous, row-major buffers. No torch, no Python.
//
// Threads: work is split into fixed items (at most kItemTokens tokens, independent of the thread count)
// whose partial sums are combined in item order, so results are bitwise identical for any number of
// threads. By default items run on the library's thread pool (one thread per hardware thread); pass a
// ParallelFor to run them on your own pool or with fewer threads.
#pragma once

#include <cstdint>
#include <functional>

#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"
#include "bandpo/loss_result.h"
#include "bandpo/options.h"

namespace bandpo {

// Calls body(begin, end) over disjoint ranges covering [0, n_items), possibly concurrently.
using ParallelFor = std::function<void(int64_t n_items, const std::function<void(int64_t, int64_t)>& body)>;

constexpr int64_t kItemTokens = 4096;

// lower/upper[i] = Band bounds of old_logp[i]; n tokens of `dtype`.
void band_bounds_cpu(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower,
                     void* upper, const ParallelFor& parallel_for = {});

// Forward: the aggregated loss and the metrics. Throws std::invalid_argument for bad options or sizes, and
// for a bad value at a valid (mask != 0) position (token_loss.h bad_token: NaN in any input or the mask, a
// log-probability above 1e-6 in logp/old_logp/ref_logp, an infinite advantage), naming the argument and
// the flat index; bandpo::out_of_memory (errors.h) when its workspace cannot be allocated.
LossResult band_loss_forward_cpu(const LossInputs& inputs, const LossOptions& options,
                                 const ParallelFor& parallel_for = {});

// Backward: grad_logp (dtype of the inputs, rows * cols) = grad_loss * d loss / d logp.
void band_loss_backward_cpu(const LossInputs& inputs, const LossOptions& options, double grad_loss, void* grad_logp,
                            const ParallelFor& parallel_for = {});

// Forward and backward in one call, as a trainer without autograd wants them: returns the loss and the
// metrics, and writes d loss / d logp (inputs.dtype, rows * cols) to grad_logp unless it is null.
LossResult band_loss_cpu(const LossInputs& inputs, const LossOptions& options, void* grad_logp,
                         const ParallelFor& parallel_for = {});

// Log-probs and entropy from raw float32 logits, for an lm_head computed in chunks (one chunk of rows of
// hidden @ W^T + b at a time, by any GEMM): the chunk's rows at raw (inputs.h LogitChunk). With the transform
// z = (logit_scale raw, then softcap tanh(. / softcap) when softcap > 0) / temperature (options.h LogitOptions,
// bandpo/lm_head.h), logp[r] = log softmax(z)[target[r]] (<= 0) and entropy[r] = -sum softmax(z) log
// softmax(z), in nats; rows with target[r] == ignore_index give 0. Targets must lie in [0, vocab) otherwise:
// the call throws std::invalid_argument naming the first that does not (also for bad sizes and options). A row
// with a NaN or +inf logit gives NaN; a logit of -inf has probability 0 (adds nothing to the entropy or the
// gradient).
void logit_stats_cpu(const float* raw, const LogitChunk& chunk, const LogitOptions& options, float* logp,
                     float* entropy, const ParallelFor& parallel_for = {});

// The backward of logit_stats_cpu: overwrites raw with d loss / d raw, given the rows' upstream gradients and,
// when kept, their logit_stats_cpu outputs (inputs.h LogitRowGrads; ignored rows get 0). The caller then forms
// d hidden = d raw @ W, d W += d raw^T @ hidden, d b += the column sums of d raw.
void logit_grad_cpu(float* raw, const LogitChunk& chunk, const LogitOptions& options, const LogitRowGrads& grads,
                    const ParallelFor& parallel_for = {});

// The library's version, "MAJOR.MINOR.PATCH" (BANDPO_VERSION_STRING of the build, for run-time checks).
const char* version();

// Runs items on the library's own persistent thread pool (one thread per hardware thread), using at most
// num_threads threads including the caller. This is the default when no ParallelFor is given.
ParallelFor thread_pool_parallel_for(int num_threads);

// Instruction set the CPU kernels were dispatched to on this machine ("avx512", "avx2" or "baseline").
const char* cpu_kernel_isa();

}  // namespace bandpo
