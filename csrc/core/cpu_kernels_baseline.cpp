// The CPU kernels for the baseline instruction set (flags set in CMakeLists.txt).
#define BANDPO_ISA_NAME "baseline"
#define BANDPO_ISA_TABLE kernel_table_baseline
#include "cpu_kernels.inc"
