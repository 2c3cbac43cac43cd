// The CPU kernels for the avx2 instruction set (flags set in CMakeLists.txt).
#define BANDPO_ISA_NAME "avx2"
#define BANDPO_ISA_TABLE kernel_table_avx2
#include "cpu_kernels.inc"
