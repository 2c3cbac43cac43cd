// The inputs of band_loss and of the lm_head's chunk steps as raw buffers, shared by the CPU and CUDA entry points
// (cpu.h, cuda.h).
#pragma once

#include <cstdint>

#include "bandpo/dtypes.h"

namespace bandpo {

enum class MaskKind : int { none = 0, boolean = 1, values = 2 };  // values: same dtype as the inputs

// Inputs of band_loss. All value buffers have `dtype` and shape [rows, cols] (a 1-D input is one row),
// except advantages, which may hold one value per row.
struct LossInputs {
  DType dtype = DType::float32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* logp = nullptr;
  const void* old_logp = nullptr;
  const void* advantages = nullptr;
  bool advantages_per_row = false;
  const void* mask = nullptr;  // uint8/bool 0-1 (MaskKind::boolean) or weights of `dtype` (values)
  MaskKind mask_kind = MaskKind::none;
  const void* ref_logp = nullptr;  // required when kl_coef != 0
  // Bounds given by the caller, both or neither: per-token lower in [0, 1] and upper in [1, ratio_max], used
  // instead of the divergence's (token_loss.h policy_terms_given).
  const void* lower = nullptr;
  const void* upper = nullptr;
  bool has_given_bounds() const { return lower != nullptr; }
};

// One chunk of an lm_head's raw logits (cpu.h logit_stats_cpu / logit_grad_cpu, cuda.h logit_stats / logit_grad):
// `rows` rows of `vocab` logits, row r at raw + r * row_stride elements (row_stride >= vocab), and each row's
// target token, in [0, vocab) or the options' ignore_index.
struct LogitChunk {
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;
  const int64_t* target = nullptr;
};

// The gradient step's float32 [rows] inputs: d loss / d logp and d loss / d entropy of each row (null: 0), and
// the rows' own logit_stats outputs logp and entropy (both, or both null; given, each row is one pass over its
// logits instead of three).
struct LogitRowGrads {
  const float* grad_logp = nullptr;
  const float* grad_entropy = nullptr;
  const float* logp = nullptr;
  const float* entropy = nullptr;
};

}  // namespace bandpo
