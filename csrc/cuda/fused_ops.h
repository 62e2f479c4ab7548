// The fused SASSHA ops on CUDA tensors (fused_ops.cu), one multi-tensor pass each; their
// contracts are those of sassha_fast/backends/reference.py. Arguments are checked by the
// caller (ops.cpp): lists of equal length, non-empty where a result is returned, tensor i of
// every list on one device with the memory layout of tensor i of the first list, parameters
// and gradients of one dtype (fp32, bf16 or fp16), state in fp32. Work is queued on the
// current stream and nothing synchronises with the host. found_inf: nullptr, or a
// one-element fp32 device tensor whose nonzero value means "this iteration is skipped".
// wrote_nonfinite: nullptr, or a one-element fp32 device tensor that the updates set to 1
// when a value they store is inf or NaN in its tensor's dtype.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "device_scalar.h"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {

using TensorList = std::vector<at::Tensor>;

// The hyper-parameters of the preconditioned step shared by both updates.
struct StepHyper {
  DeviceScalar lr;
  DeviceScalar bias_correction1;
  DeviceScalar bias_correction2;  // already raised to its power
  float weight_decay;
  float beta1;
  float one_minus_beta1;  // computed on the host in double, as the reference does
  float hessian_power;
  float eps;
};

at::Tensor global_norm(const TensorList& tensors, const TensorList* weights);
void perturb(const TensorList& params, const TensorList& grads, DeviceScalar scale,
             bool adaptive, const float* found_inf);
void sassha_update(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                   const TensorList& exp_hessians, const TensorList* perturbations,
                   const StepHyper& hyper, const float* found_inf, float* wrote_nonfinite);
void hessian_ema(const TensorList& exp_hessians, const TensorList& hessians, float beta2,
                 float one_minus_beta2, const float* found_inf, float* wrote_nonfinite);
at::Tensor msassha_update(const TensorList& params, const TensorList& grads,
                          const TensorList& exp_avgs, const TensorList& exp_hessians,
                          DeviceScalar norm_factor, const StepHyper& hyper,
                          const float* found_inf, float* wrote_nonfinite);
void add_scaled(const TensorList& params, const TensorList& tensors, DeviceScalar alpha);

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
