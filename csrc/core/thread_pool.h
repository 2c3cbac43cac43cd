// Internal: running the items of a call, on the caller's ParallelFor or on the library's own thread pool.
#pragma once

#include <cstdint>
#include <functional>

#include "bandpo/cpu.h"

namespace bandpo {
namespace detail {

// body(begin, end) over [0, n_items): on parallel_for when given, else on the library's pool.
void run_parallel(const ParallelFor& parallel_for, int64_t n_items, const std::function<void(int64_t, int64_t)>& body);

}  // namespace detail
}  // namespace bandpo
