// Argument checks shared by the CPU driver, the CUDA launchers and the C ABI, so that every entry point
// refuses the same calls with the same words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "bandpo/dtypes.h"
#include "bandpo/errors.h"
#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {
namespace detail {

// Bytes of one element of `dtype`; throws std::invalid_argument for a code outside DType.
int64_t element_bytes(DType dtype, const char* op);

// rows * cols, computed without overflow: throws std::invalid_argument (naming both) unless rows, cols >= 0
// and a [rows, cols] buffer of `dtype` has at most PTRDIFF_MAX bytes, the size of the largest object C++
// can address. Every later index, offset and byte count of the call then fits in int64.
int64_t checked_numel(int64_t rows, int64_t cols, DType dtype, const char* op);

// The checks of band_bounds: dtype, n (>= 0, bytes as above) and non-null buffers when n > 0.
void check_bounds_call(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, const void* lower,
                       const void* upper, const char* op);

// The checks of band_loss before any work: options, dtype, mask kind, sizes (as checked_numel), non-null
// buffers for a non-empty call, ref_logp when kl_coef != 0. Returns rows * cols.
int64_t check_loss_call(const LossInputs& inputs, const LossOptions& options, const char* op);

// The lm_head statistics' chunk and options (cpu.h logit_stats_cpu / logit_grad_cpu, cuda.h logit_stats /
// logit_grad): rows >= 0, vocab >= 1, row_stride >= vocab, rows x row_stride float32 within one buffer's bytes
// (PTRDIFF_MAX), non-null raw and target when rows > 0, and the options' rows of tables.h; `op` starts each
// message.
void check_logit_chunk(const char* op, const void* raw, const LogitChunk& chunk, const LogitOptions& options);

// The gradient's optional row outputs (logp, entropy): both or neither.
void check_logit_outputs(const char* op, const float* logp, const float* entropy);

// A host workspace of `count` values: an allocation failure becomes bandpo::out_of_memory naming the size
// and the shape that asked for it (std::bad_alloc says neither).
template <class T>
std::vector<T> host_workspace(int64_t count, const LossInputs& in, const char* op) {
  try {
    return std::vector<T>(static_cast<size_t>(count));
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {}
  throw out_of_memory(std::string(op) + ": could not allocate a host workspace of " + std::to_string(count) + " x " +
                      std::to_string(sizeof(T)) + " bytes for rows = " + std::to_string(in.rows) +
                      ", cols = " + std::to_string(in.cols));
}

}  // namespace detail
}  // namespace bandpo
