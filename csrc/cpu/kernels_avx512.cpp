// The kernels compiled for AVX-512 (F, BW, VL, DQ) with 512-bit vectors, used when the CPU
// has them.
#include "kernels.h"

#ifdef SASSHA_CPU_X86_KERNELS
#include <immintrin.h>

#define SASSHA_ISA_AVX512 1
#if defined(__clang__)
#define SASSHA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
#else
#define SASSHA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"
#endif
#define SASSHA_KERNEL_TABLE kAvx512Kernels
#define SASSHA_ISA_NAME "avx512"
#include "kernels.inc"
#endif
