// What the threading driver and the per-instruction-set kernels share. No torch headers:
// the kernel files include this before switching on AVX2 / AVX-512 code generation.
#pragma once
#include <cstdint>

namespace sassha {
namespace cpu {

enum class Dtype : uint8_t { kF32, kBF16, kF16, kF64 };

constexpr int kMaxOperands = 5;

// One tensor of every operand list of an op: pointers to elements laid out alike, so that
// element j of each operand is the same logical element.
struct Span {
  int64_t numel = 0;
  void* data[kMaxOperands] = {};
  Dtype dtype[kMaxOperands] = {};
};

// The scalars of one op call, computed in double as the reference computes them in Python;
// a kernel rounds them once to its compute type (float, or double for float64 lists).
struct Scalars {
  // perturb
  double scale = 0.0;
  bool adaptive = false;
  // global_norm
  bool weighted = false;
  // sassha_update / msassha_update
  bool leave_perturbation = false;
  double decay = 1.0;  // 1 - lr * weight_decay
  double beta1 = 0.0, one_minus_beta1 = 0.0;
  double step_size = 0.0;  // lr / bias_correction1
  double bias_correction2 = 1.0, eps = 0.0;
  double hessian_power = 0.5;
  double norm_factor = 0.0;
  // hessian_ema
  double beta2 = 0.0, one_minus_beta2 = 0.0;
  // add_scaled
  double alpha = 0.0;
};

// What a kernel reports of the elements it ran over: its share of the op's sum of squares
// (0 for ops that reduce nothing), and whether it stored a value that is not finite in its
// tensor's dtype (an update writing inf or NaN: the ops' wrote_nonfinite flag).
struct Partial {
  double squares = 0.0;
  bool nonfinite = false;

  Partial& operator+=(const Partial& other) {
    squares += other.squares;
    nonfinite = nonfinite || other.nonfinite;
    return *this;
  }
};

// Runs an op over elements [begin, end) of one span.
using RangeKernel = Partial (*)(const Scalars&, const Span&, int64_t begin, int64_t end);

// Operand order in Span::data, per op:
//   global_norm    tensors, weights (when Scalars::weighted)
//   perturb        params, grads
//   sassha_update  params, grads, exp_avgs, exp_hessians, perturbations (when leaving)
//   hessian_ema    exp_hessians, hessians
//   msassha_update params, grads, exp_avgs, exp_hessians
//   add_scaled     params, tensors
struct OpKernels {
  RangeKernel global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled;
};

// Per instruction set, the kernels computing in fp32 (fp32, bf16 and fp16 lists with fp32
// state) and those computing in fp64 (every list float64).
struct KernelTable {
  const char* isa;
  OpKernels fp32, fp64;
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
