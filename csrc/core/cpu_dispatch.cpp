// Run-time choice of the CPU kernel variant (the cpu_kernels_*.inc parts compiled for baseline x86-64, AVX2 and
// AVX-512; cpu_kernels.h).
#include "cpu_dispatch.h"

#include <cstdlib>
#include <string>

#include "bandpo/cpu.h"

namespace bandpo {
namespace detail {
namespace {

// The table of the instruction set whose functions live in namespace `ns` (cpu_kernels.h).
#define BANDPO_KERNEL_TABLE(ns, name)                                                                          \
  KernelTable {                                                                                                \
    name, ns::bounds, ns::loss_segment, ns::grad_segment, ns::weight_sum, ns::kl_table_exact, ns::logit_stats, \
        ns::logit_grad                                                                                         \
  }
const KernelTable kBaseline = BANDPO_KERNEL_TABLE(cpu_baseline, "baseline");
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
const KernelTable kAvx2 = BANDPO_KERNEL_TABLE(cpu_avx2, "avx2");
const KernelTable kAvx512 = BANDPO_KERNEL_TABLE(cpu_avx512, "avx512");
#endif
#undef BANDPO_KERNEL_TABLE

}  // namespace

// The best kernels this CPU runs, unless BANDPO_CPU_ISA (baseline, avx2, avx512) asks for another one (to
// test every variant on one machine); a variant the CPU lacks is never taken.
const KernelTable& cpu_kernels() {
  static const KernelTable& table = []() -> const KernelTable& {
    const char* requested = std::getenv("BANDPO_CPU_ISA");
    const std::string want = requested ? requested : "";
    if (want == "baseline") return kBaseline;
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (want == "avx2" && has_avx2) return kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
      return kAvx512;
    if (has_avx2) return kAvx2;
#endif
    return kBaseline;
  }();
  return table;
}

}  // namespace detail

const char* cpu_kernel_isa() { return detail::cpu_kernels().isa; }

}  // namespace bandpo
