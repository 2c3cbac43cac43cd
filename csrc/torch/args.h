// Argument handling shared by the CPU and CUDA kernels of torch.ops.bandpo, on PyTorch's ABI-stable API
// (torch/csrc/stable, torch/headeronly only): typed errors, the unboxing of the options from the op's stack
// (driven by tables.h), dtype/device/shape checks with messages naming the argument, and the contiguous views
// handed to the core.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <sstream>
#include <string>
#include <utility>

#include <vector>

#include "bandpo/arrays.h"
#include "bandpo/errors.h"
#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Python's exception types from a stable-ABI kernel: the kernel's C++ exception travels through torch's
// dispatcher to pybind11's translator, which turns std::invalid_argument into ValueError and its own
// type_error into TypeError (no torch C++ type crosses the boundary). Checked by tests/test_errors.py on
// every torch CI installs the wheel into.
// The Python exception type and message of the last refusal raised on this thread (type empty before any).
struct Refusal {
  const char* type = "";
  std::string message;
};
const Refusal& last_refusal();
[[noreturn]] void raise_value_error(const std::string& message);
[[noreturn]] void raise_type_error(const std::string& message);

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

#define BANDPO_CHECK_VALUE(cond, ...)                                     \
  do {                                                                    \
    if (!(cond)) ::bandpo::raise_value_error(::bandpo::cat(__VA_ARGS__)); \
  } while (0)
#define BANDPO_CHECK_TYPE(cond, ...)                                     \
  do {                                                                   \
    if (!(cond)) ::bandpo::raise_type_error(::bandpo::cat(__VA_ARGS__)); \
  } while (0)

// Names in one vocabulary with the numpy face and Python: "float32", "cpu", "cuda:0", "[2, 5]".
const char* dtype_name(ScalarType t);
std::string device_name(const Tensor& t);
std::string shape_string(const Tensor& t);

// A tensor as the core's rules see it (bandpo/arrays.h): its element type and sizes (held here).
struct TensorDesc {
  explicit TensorDesc(const Tensor& t);
  std::vector<int64_t> sizes;
  ArrayDesc desc;
  TensorDesc(const TensorDesc& o) : sizes(o.sizes), desc(o.desc) { desc.shape = sizes.data(); }
  TensorDesc& operator=(const TensorDesc&) = delete;
};

// The core's rule for a float argument (TypeError naming it otherwise).
DType to_dtype(const Tensor& t, const char* name);
ScalarType scalar_type(DType dtype);

// The op's options from its boxed stack, in schema order (tables.h). Every entry is consumed (strings and
// tensors on the stack are owned by the kernel). Throws ValueError naming the option.
BoundOptions unbox_bound_options(StableIValue* stack);
LossOptions unbox_loss_options(StableIValue* stack);
LogitOptions unbox_logit_options(StableIValue* stack);
// Number of stack entries those take, and the check every boxed kernel makes of its stack against them (a
// schema out of step with tables.h would otherwise read past the stack).
constexpr uint64_t kNumBoundOptions = 0
#define BANDPO_COUNT_OPTION(...) +1
    BANDPO_BOUND_OPTION_TABLE(BANDPO_COUNT_OPTION);
constexpr uint64_t kNumLossOptions = kNumBoundOptions BANDPO_LOSS_OPTION_TABLE(BANDPO_COUNT_OPTION);
constexpr uint64_t kNumLogitOptions = 0 BANDPO_LOGIT_OPTION_TABLE(BANDPO_COUNT_OPTION);
#undef BANDPO_COUNT_OPTION
void check_stack(const char* op, uint64_t num_args, uint64_t expected_args, uint64_t num_outputs,
                 uint64_t expected_outputs);

// Runs the core, turning its bandpo::dtype_error into TypeError and its std::invalid_argument (bad values,
// shapes, options, naming argument and index) into ValueError.
template <class F>
auto with_python_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const dtype_error& e) {
    raise_type_error(e.what());
  } catch (const std::invalid_argument& e) {
    raise_value_error(e.what());
  }
}
template <class F>
auto rethrow_as_value_error(F&& f) -> decltype(f()) {
  return with_python_errors(std::forward<F>(f));
}

// band_bounds' stack (schemas.cpp), checked: old_logp (made contiguous), its dtype, the options.
struct BoundsCall {
  Tensor old_logp;
  DType dtype;
  BoundOptions options;
};
BoundsCall unbox_bounds_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs);

// band_loss's stack (schemas.cpp), checked for its size: the seven tensors of the schema, then the options
// (band_loss_backward's after its grad_loss too).
struct LossCall {
  Tensor logp, old_logp, advantages;
  std::optional<Tensor> mask, ref_logp, lower, upper;
  LossOptions options;
};
constexpr int kNumLossTensors = 7;
LossCall unbox_loss_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs);

// band_loss_backward's stack (schemas.cpp), checked: grad_loss, which must hold one value, then band_loss's
// arguments. The CPU and CUDA kernels differ only in where they read grad_loss.
struct BackwardCall {
  Tensor grad_loss;
  LossCall call;
};
BackwardCall unbox_backward_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs);

// Checked, contiguous views of band_loss's tensors and the LossInputs pointing into them.
// (optional: an empty stable Tensor is not free, it allocates a handle)
// inputs.dtype is the compute dtype (float32 under mixed precision); the loss and the gradient are returned
// in logp_dtype.
struct LossArgs {
  std::optional<Tensor> logp, old_logp, advantages, mask, ref_logp, lower, upper;
  LossInputs inputs;
  ScalarType logp_dtype = ScalarType::Float;
};

// An output computed in the compute dtype (the loss, the gradient), returned in logp's dtype.
inline Tensor in_logp_dtype(const Tensor& t, const LossArgs& a) {
  return t.scalar_type() == a.logp_dtype ? t : torch::stable::to(t, a.logp_dtype);
}

LossArgs loss_args(const LossCall& call);

// A fresh contiguous tensor of `like`'s shape, dtype and device (sizes given explicitly where they differ).
Tensor empty_like_contiguous(const Tensor& like);
Tensor empty_on(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& device_of);
Tensor as_contiguous(const Tensor& t);

// A call of logit_chunk_stats or logit_chunk_grad_ (schemas.cpp), unboxed and checked for either device: raw
// [rows, vocab] with unit column stride (rows may be strided; a raw with strided columns is made contiguous for the
// stats, the gradient writes raw in place and refuses it), float32 (or, where half_ok, bfloat16 / float16: the
// CUDA kernels read the GEMM's output as it is), target [rows] int64 on raw's device; the core's view of the chunk,
// the options, and for the gradient its float32 [rows] arguments (null where absent; `keep` holds their
// contiguous copies alive).
struct LogitChunkCall {
  Tensor raw, target;
  LogitChunk chunk;
  LogitOptions options;
  LogitRowGrads grads;
  std::optional<Tensor> keep[4];
};
LogitChunkCall unbox_logit_stats(StableIValue* stack, uint64_t num_args, uint64_t num_outputs, bool half_ok);
LogitChunkCall unbox_logit_grad(StableIValue* stack, uint64_t num_args, uint64_t num_outputs, bool half_ok);

// The ops with C++ kernels, each registered for the CPU (ops_cpu.cpp: NAME_cpu_boxed) and CUDA (ops_cuda.cpp:
// NAME_cuda_boxed) from this one list; the schemas are schemas.cpp's, the ops written in Python are
// bandpo/_ops.py's.
#define BANDPO_KERNEL_OPS(BANDPO_OP) \
  BANDPO_OP(band_bounds)             \
  BANDPO_OP(band_loss)               \
  BANDPO_OP(band_loss_backward)      \
  BANDPO_OP(logit_chunk_stats)       \
  BANDPO_OP(logit_chunk_grad_)

// Whether the CUDA band_loss synchronises after its forward to raise a ValueError (naming the argument and
// index) for bad values at valid positions. Off by default: the ops never synchronise, and bad values make
// the loss and the metrics NaN instead. Initialised from the environment variable BANDPO_CHECK_INPUTS=1;
// bandpo.set_input_checks() changes it.
bool input_checks_enabled();
void set_input_checks_enabled(bool enabled);

}  // namespace bandpo
