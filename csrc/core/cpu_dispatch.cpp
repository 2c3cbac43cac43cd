// Run-time choice of the CPU kernel variant (cpu_kernels_{baseline,avx2,avx512}.cpp).
#include "cpu_dispatch.h"

#include <cstdlib>
#include <string>

#include "bandpo/cpu.h"

namespace bandpo {
namespace detail {

// The best kernels this CPU runs, unless BANDPO_CPU_ISA (baseline, avx2, avx512) asks for another one (to
// test every variant on one machine); a variant the CPU lacks is never taken.
const KernelTable& cpu_kernels() {
  static const KernelTable& table = []() -> const KernelTable& {
    const char* requested = std::getenv("BANDPO_CPU_ISA");
    const std::string want = requested ? requested : "";
    if (want == "baseline") return detail::kernel_table_baseline();
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (want == "avx2" && has_avx2) return detail::kernel_table_avx2();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return detail::kernel_table_avx512();
    if (has_avx2) return detail::kernel_table_avx2();
#endif
    return detail::kernel_table_baseline();
  }();
  return table;
}

}  // namespace detail

const char* cpu_kernel_isa() { return detail::cpu_kernels().isa; }

}  // namespace bandpo
