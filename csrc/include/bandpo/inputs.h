// The inputs of band_loss as raw buffers, shared by the CPU and CUDA entry points (cpu.h, cuda.h).
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
};

}  // namespace bandpo
