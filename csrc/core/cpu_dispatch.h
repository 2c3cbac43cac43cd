// Internal: the CPU kernel variant this machine runs (baseline x86-64, AVX2 or AVX-512), picked once.
#pragma once

#include "cpu_kernels.h"

namespace bandpo {
namespace detail {

const KernelTable& cpu_kernels();

}  // namespace detail
}  // namespace bandpo
