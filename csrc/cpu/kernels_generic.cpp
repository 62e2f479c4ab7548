// The kernels for any CPU, in the build's baseline instruction set: the fallback when the
// CPU lacks AVX2 (or is not x86).
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace sassha {
namespace cpu {
namespace {
inline float half_to_float(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }
inline uint16_t float_to_half(float f) { return c10::detail::fp16_ieee_from_fp32_value(f); }
}  // namespace
}  // namespace cpu
}  // namespace sassha

#define SASSHA_KERNEL_TABLE kGenericKernels
#define SASSHA_ISA_NAME "generic"
#include "kernels.inc"
