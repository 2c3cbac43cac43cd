// Internal: run-time enum values to compile-time template arguments, for the CPU and CUDA kernels alike.
#pragma once

#include <type_traits>

#include "bandpo/bounds.h"
#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"

namespace bandpo {
namespace detail {

// f(T*) with a null pointer of the storage type of `dtype`.
template <class F>
inline void with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::float32:
      f(static_cast<float*>(nullptr));
      break;
    case DType::float64:
      f(static_cast<double*>(nullptr));
      break;
    case DType::bfloat16:
      f(static_cast<bfloat16*>(nullptr));
      break;
    case DType::float16:
      f(static_cast<float16*>(nullptr));
      break;
  }
}

template <class F>
inline void with_divergence(Divergence d, F&& f) {
  switch (d) {
#define BANDPO_DIVERGENCE_CASE(value, ...)                      \
  case Divergence::value:                                       \
    f(std::integral_constant<Divergence, Divergence::value>{}); \
    break;
    BANDPO_DIVERGENCE_TABLE(BANDPO_DIVERGENCE_CASE)
#undef BANDPO_DIVERGENCE_CASE
  }
}

template <class F>
inline void with_mask_kind(MaskKind k, F&& f) {
  switch (k) {
    case MaskKind::none:
      f(std::integral_constant<MaskKind, MaskKind::none>{});
      break;
    case MaskKind::boolean:
      f(std::integral_constant<MaskKind, MaskKind::boolean>{});
      break;
    case MaskKind::values:
      f(std::integral_constant<MaskKind, MaskKind::values>{});
      break;
  }
}

}  // namespace detail
}  // namespace bandpo
