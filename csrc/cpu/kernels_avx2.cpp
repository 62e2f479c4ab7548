// The kernels compiled for AVX2 with FMA and F16C (x86-64-v3), used when the CPU has them.
#include <cmath>
#include <cstdint>

#include "kernels.h"

#ifdef SASSHA_CPU_X86_KERNELS
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define SASSHA_ISA_AVX2 1
#define SASSHA_KERNEL_TABLE kAvx2Kernels
#define SASSHA_ISA_NAME "avx2"
#include "kernels.inc"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SASSHA_CPU_X86_KERNELS
