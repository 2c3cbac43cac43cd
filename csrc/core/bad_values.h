// Internal: the CPU op's error for a bad value at a valid position (the CUDA kernels write NaN instead).
#pragma once

#include <cstdint>

#include "bandpo/inputs.h"
#include "bandpo/options.h"

namespace bandpo {
namespace detail {

// Throws std::invalid_argument for the first bad value at a valid position in [begin, end), if any: the
// positions bad_token() and, for given bounds, bad_given_bounds() (token_loss.h) flag, named by argument and
// flat index.
void throw_if_bad_value(const LossInputs& in, const LossOptions& options, int64_t begin, int64_t end);

}  // namespace detail
}  // namespace bandpo
