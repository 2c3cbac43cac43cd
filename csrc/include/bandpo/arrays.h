// The argument rules of band_loss, once, for every face: arrays as a caller holds them (an element type and a
// shape) in, the core's layout of the call (LossInputs: rows, cols, per-row advantages, mask kind, the dtype
// it computes in) out, or an error naming the argument and what it must be. The torch op, the C ABI and so the
// numpy face all call this; each face then makes its arrays contiguous (and converts those the layout asks
// for) before calling the kernels.
#pragma once

#include <cstdint>
#include <string>

#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {

// Element types a face may hand in: the four float storage types (DType's codes), and the others a mask can
// be or a caller can pass by mistake (named in the error).
enum class ElementType : int {
  float32 = 0,
  float64 = 1,
  bfloat16 = 2,
  float16 = 3,
  boolean = 4,
  uint8 = 5,
  int64 = 6,
  other = 7
};

// "float32", "bool", ...; for ElementType::other the face's own name of the dtype is used where it gives one.
const char* element_type_name(ElementType type);

// One argument: absent (mask, ref_logp not given), or its element type and shape (sizes >= 0).
struct ArrayDesc {
  bool present = false;
  ElementType type = ElementType::other;
  int ndim = 0;
  const int64_t* shape = nullptr;
  const char* type_name = nullptr;  // the face's name of an ElementType::other dtype ("int32"), for messages
};

// The seven tensors of band_loss, in its argument order (LossArg indexes them). lower and upper: bounds given by
// the caller (both or neither), used instead of the divergence's.
struct LossArrays {
  ArrayDesc logp, old_logp, advantages, mask, ref_logp, lower, upper;
};
enum LossArg : int { kArgLogp = 0, kArgOldLogp, kArgAdvantages, kArgMask, kArgRefLogp, kArgLower, kArgUpper };
constexpr int kLossArgs = 7;

struct LossLayout {
  // The dtype the kernels read and write: logp's; float32 for a bfloat16 / float16 logp beside float32
  // old_logp, advantages or ref_logp (mixed precision as trainers hold it: the gradient is computed in float32
  // and the face returns it in logp's dtype).
  DType compute = DType::float32;
  int64_t rows = 0, cols = 0;  // a 2-D call is [rows, cols]; 0-D is 1 x 1; otherwise the last axis is cols
  bool advantages_per_row = false;
  MaskKind mask_kind = MaskKind::none;
  unsigned convert = 0;  // bit (1 << LossArg): that argument must be converted to `compute` first
  bool converts(LossArg a) const { return (convert >> a) & 1u; }
};

// The rules (docs/design.md, "The math", Inputs): dtypes (bandpo::dtype_error naming the argument and the dtypes
// allowed), shapes ("old_logp must have the shape of logp [2, 5]; got [2, 3]"), the aggregation's 2-D
// requirement, per-row advantages ([B] or [B, 1] for 2-D logp), mask kinds (bool/uint8 flags or float
// weights, read in the compute dtype), kl_coef's ref_logp, lower and upper together (shaped and typed as
// old_logp; their values are checked by the kernels, bad_given_bounds); std::invalid_argument for the others. The
// options are validated too.
LossLayout loss_layout(const LossArrays& arrays, const LossOptions& options);

// A float argument's storage type, or bandpo::dtype_error "old_logp must be float32, float64, bfloat16 or
// float16; got int64" (every face's words for it).
DType float_dtype(const ArrayDesc& array, const char* name);

// The element count of a described array, checked (ndim in [0, 64], sizes >= 0, no overflow), naming it.
int64_t element_count(const ArrayDesc& array, const char* name);

// The lm_head chunk steps' arrays (logit_chunk_stats / logit_chunk_grad_, bandpo.np.logit_stats / logit_grad_):
// raw [rows, vocab] float32 (or, with half_ok, bfloat16 / float16: the CUDA kernels read a GEMM's output as it
// is), vocab >= 1, its columns adjacent (raw_col_stride 1, in elements), its rows at raw_row_stride >= vocab
// apart (any stride for one row); target [rows] int64. Returns the row stride the kernels take. `op` starts
// every message ("logit_chunk_stats: raw must be 2-D [rows, vocab], got shape [3]").
struct LogitChunkLayout {
  int64_t rows = 0, vocab = 0, row_stride = 0;
};
LogitChunkLayout logit_chunk_layout(const char* op, const ArrayDesc& raw, int64_t raw_row_stride,
                                    int64_t raw_col_stride, const ArrayDesc& target, bool half_ok);
// An optional float32 [rows] argument of the gradient step (grad_logp, grad_entropy, logp, entropy).
void check_row_values(const char* op, const char* name, const ArrayDesc& values, int64_t rows);

// "[2, 5]": the shape notation of every message.
std::string shape_string(const int64_t* shape, int ndim);

// The one wording of "kl_coef needs ref_logp" (the raw-buffer checks use it too).
std::string kl_coef_needs_ref_message(double kl_coef);
// ... and of "lower and upper come together".
std::string bounds_come_together_message(bool lower_given);

}  // namespace bandpo
