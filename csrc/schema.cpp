// The schemas of the fused ops, torch.ops.sassha_fast.<op>, defined once for every device: the
// CPU kernels (cpu/ops.cpp) and the CUDA kernels (cuda/ops.cpp) register under them, and the
// fake kernels that let FakeTensor, meta tensors and torch.compile run them without data are
// in sassha_fast/backends/fake_kernels.py. Contracts: sassha_fast/backends/reference.py.
//
// Lists an op writes are annotated (a!), (b!): functionalization and the compiler learn from
// them what an op mutates. The per-step scalars (scale, norm_factor, lr, both bias
// corrections, alpha) are tensors with one element, so that a value on the device reaches its
// kernel without a host read; a number is passed as a one-element CPU tensor.
//
// wrote_nonfinite (the updates of parameters and state): a one-element tensor on the
// parameters' device that the op sets to 1 when a value it stores is inf or NaN in its
// tensor's dtype, found in the pass that writes it; the op never clears it.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace {
constexpr const char* kOps[] = {"global_norm",    "perturb",       "sassha_update",
                                "hessian_ema",    "msassha_update", "add_scaled"};

void define_ops(torch::Library& m) {
  m.def("global_norm(Tensor[] tensors, Tensor[]? weights) -> Tensor");
  m.def("perturb(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor scale, bool adaptive, "
        "Tensor? found_inf) -> ()");
  m.def("sassha_update(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor[] exp_hessians, Tensor[]? perturbations, Tensor lr, float weight_decay, "
        "float beta1, Tensor bias_correction1, Tensor bias_correction2, float hessian_power, "
        "float eps, Tensor? found_inf, Tensor(c!)? wrote_nonfinite=None) -> ()");
  m.def("hessian_ema(Tensor(a!)[] exp_hessians, Tensor[] hessians, float beta2, "
        "Tensor? found_inf, Tensor(b!)? wrote_nonfinite=None) -> ()");
  m.def("msassha_update(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor[] exp_hessians, Tensor norm_factor, Tensor lr, float weight_decay, "
        "float beta1, Tensor bias_correction1, Tensor bias_correction2, float hessian_power, "
        "float eps, Tensor? found_inf, Tensor(c!)? wrote_nonfinite=None) -> Tensor");
  m.def("add_scaled(Tensor(a!)[] params, Tensor[] tensors, Tensor alpha) -> ()");
}

// The ops have no derivative: autograd says so when asked for one, instead of returning a
// wrong gradient. (Version counters are bumped by the kernels: csrc/written.h.)
void refuse_derivatives(torch::Library& m) {
  for (const char* op : kOps) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
}  // namespace

TORCH_LIBRARY(sassha_fast, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(sassha_fast, Autograd, m) { refuse_derivatives(m); }

// The same ops under a test-only name, for the CUDA kernels compiled for the host
// (csrc/cuda/host_emulation.h, backend cuda_emulated): under sassha_fast, CPU tensors belong
// to the CPU kernels.
TORCH_LIBRARY(sassha_fast_cuda_emulated, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(sassha_fast_cuda_emulated, Autograd, m) { refuse_derivatives(m); }
