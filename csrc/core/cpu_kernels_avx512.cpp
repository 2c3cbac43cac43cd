// The CPU kernels for the avx512 instruction set (flags set in CMakeLists.txt).
#define BANDPO_ISA_NAME "avx512"
#define BANDPO_ISA_TABLE kernel_table_avx512
#include "cpu_kernels.inc"
