// Internal: the CPU op's error for a bad value at a valid position (the CUDA kernels write NaN instead).
#pragma once

#include <cstdint>

#include "bandpo/inputs.h"

namespace bandpo {
namespace detail {

// Throws std::invalid_argument for the first bad value at a valid position in [begin, end), if any: the
// positions bad_token() (token_loss.h) flags, named by argument and flat index.
void throw_if_bad_value(const LossInputs& in, int64_t begin, int64_t end);

}  // namespace detail
}  // namespace bandpo
