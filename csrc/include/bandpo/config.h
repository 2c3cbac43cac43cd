// Compiler glue shared by every translation unit of the core library.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BANDPO_HD __host__ __device__ __forceinline__
#else
#if defined(__GNUC__) || defined(__clang__)
#define BANDPO_HD inline __attribute__((always_inline))
#else
#define BANDPO_HD inline
#endif
#endif

// Fixed-count inner loops must be fully unrolled for the outer token loop to vectorise.
#if defined(__CUDACC__) || defined(__clang__)
#define BANDPO_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define BANDPO_UNROLL _Pragma("GCC unroll 8")
#else
#define BANDPO_UNROLL
#endif
