// The kernels compiled for AVX2 with FMA and F16C (x86-64-v3), used when the CPU has them.
#include "kernels.h"

#ifdef SASSHA_CPU_X86_KERNELS
#include <immintrin.h>

#define SASSHA_ISA_AVX2 1
#define SASSHA_TARGET "avx2,fma,f16c"
#define SASSHA_KERNEL_TABLE kAvx2Kernels
#define SASSHA_ISA_NAME "avx2"
#include "kernels.inc"
#endif
