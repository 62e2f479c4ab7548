// What the threading driver and the per-instruction-set kernels share. No torch headers:
// the kernel files include this before switching on AVX2 / AVX-512 code generation.
#pragma once
#include <cstdint>

namespace sassha {
namespace cpu {

enum class Dtype : uint8_t { kF32, kBF16, kF16 };

constexpr int kMaxOperands = 5;

// One tensor of every operand list of an op: pointers to elements laid out alike, so that
// element j of each operand is the same logical element.
struct Span {
  int64_t numel = 0;
  void* data[kMaxOperands] = {};
  Dtype dtype[kMaxOperands] = {};
};

// The scalars of one op call, rounded to fp32 where the reference rounds them.
struct Scalars {
  // perturb
  float scale = 0.f;
  bool adaptive = false;
  // global_norm
  bool weighted = false;
  // sassha_update / msassha_update
  bool leave_perturbation = false;
  float decay = 1.f;  // 1 - lr * weight_decay
  float beta1 = 0.f, one_minus_beta1 = 0.f;
  float step_size = 0.f;  // lr / bias_correction1
  float bias_correction2 = 1.f, eps = 0.f;
  float hessian_power = 0.5f;
  float norm_factor = 0.f;
  // hessian_ema
  float beta2 = 0.f, one_minus_beta2 = 0.f;
  // add_scaled
  float alpha = 0.f;
};

// Runs an op over elements [begin, end) of one span; returns its share of the op's sum of
// squares (0 for ops that reduce nothing).
using RangeKernel = double (*)(const Scalars&, const Span&, int64_t begin, int64_t end);

// Operand order in Span::data, per op:
//   global_norm    tensors, weights (when Scalars::weighted)
//   perturb        params, grads
//   sassha_update  params, grads, exp_avgs, exp_hessians, perturbations (when leaving)
//   hessian_ema    exp_hessians, hessians
//   msassha_update params, grads, exp_avgs, exp_hessians
//   add_scaled     params, tensors
struct KernelTable {
  const char* isa;
  RangeKernel global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled;
};

extern const KernelTable kGenericKernels;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SASSHA_CPU_X86_KERNELS 1
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;
#endif

// The best table this CPU runs (or the one SASSHA_FAST_CPU_ISA asks for), chosen once.
const KernelTable& active_kernels();

}  // namespace cpu
}  // namespace sassha
