// The kernels compiled for AVX-512 (F, BW, VL, DQ) with 512-bit vectors, used when the CPU
// has them.
#include <cmath>
#include <cstdint>

#include "kernels.h"

#ifdef SASSHA_CPU_X86_KERNELS
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(                                                              \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))),            \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#endif

#define SASSHA_ISA_AVX512 1
#define SASSHA_KERNEL_TABLE kAvx512Kernels
#define SASSHA_ISA_NAME "avx512"
#include "kernels.inc"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SASSHA_CPU_X86_KERNELS
