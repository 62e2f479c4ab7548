// The CPU kernels of the ops torch.ops.sassha_fast.<op> (schemas: csrc/schema.cpp; contracts:
// sassha_fast/backends/reference.py). Each call checks its lists and runs one multi-threaded
// pass over all their elements with the kernels for this CPU's instruction set. The
// dispatcher has released the GIL before a kernel runs, and has sent tensors that are not
// plain CPU tensors (subclasses such as DTensor, FakeTensor, meta tensors) elsewhere.
#include "ops.h"

#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>

#include "kernels.h"
#include "tensor_batch.h"
#include "../written.h"

namespace sassha {
namespace cpu {
namespace {

using at::TensorList;
using OptionalList = std::optional<TensorList>;

// A per-step scalar: a one-element CPU tensor (a number arrives as one), read here.
double value_of(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is a tensor on ", t.device(),
              "; the CPU kernels read scalars from numbers or CPU tensors");
  TORCH_CHECK(t.numel() == 1 && t.is_floating_point(), op, ": ", name, " is a ",
              t.scalar_type(), " tensor of ", t.numel(),
              " elements; expected a number or a one-element floating-point tensor");
  switch (t.scalar_type()) {
    case at::kFloat:
      return *t.const_data_ptr<float>();
    case at::kDouble:
      return *t.const_data_ptr<double>();
    default:
      return t.item<double>();
  }
}

// found_inf nonzero (NaN included): this iteration is skipped.
bool skipped(const char* op, const std::optional<at::Tensor>& found_inf) {
  return found_inf && value_of(op, "found_inf", *found_inf) != 0.0;
}

// An update's wrote_nonfinite flag (a one-element fp32 tensor the caller zeroes; the op sets
// it when it stores inf or NaN and never clears it), checked before the op writes anything.
const at::Tensor* nonfinite_flag(const char* op,
                                 const std::optional<at::Tensor>& wrote_nonfinite) {
  if (!wrote_nonfinite) return nullptr;
  const at::Tensor& flag = *wrote_nonfinite;
  TORCH_CHECK(flag.device().is_cpu() && flag.numel() == 1 && flag.scalar_type() == at::kFloat,
              op, ": wrote_nonfinite must be None or a one-element fp32 tensor on cpu, got a ",
              flag.scalar_type(), " tensor of ", flag.numel(), " elements on ", flag.device());
  return &flag;
}

void report_nonfinite(const at::Tensor* flag, bool nonfinite) {
  if (flag != nullptr && nonfinite) flag->fill_(1);
}

const OpKernels& kernels_for(const TensorBatch& batch) {
  return batch.fp64() ? active_kernels().fp64 : active_kernels().fp32;
}

// A sum of squares as the 0-d tensor an op returns: float64 for float64 lists, else fp32.
// A sum beyond fp32's range is inf there, as the reference's fp32 sum is (scalar_tensor would
// refuse to convert it).
at::Tensor result_scalar(double value, const TensorBatch& batch) {
  if (batch.fp64()) return at::scalar_tensor(value, at::kDouble);
  const bool beyond = std::isfinite(value) && std::fabs(value) > std::numeric_limits<float>::max();
  return at::scalar_tensor(beyond ? std::copysign(INFINITY, value) : value, at::kFloat);
}

at::Tensor global_norm(TensorList tensors, const OptionalList& weights) {
  TensorBatch batch("global_norm", tensors.size());
  batch.add("tensors", tensors, Kind::kValues, Access::kRead);
  Scalars s;
  if (weights) {
    batch.add("weights", *weights, Kind::kValues, Access::kRead);
    s.weighted = true;
  }
  return result_scalar(std::sqrt(run(kernels_for(batch).global_norm, s, batch.spans()).squares),
                       batch);
}

void perturb(TensorList params, TensorList grads, const at::Tensor& scale,
             bool adaptive, const std::optional<at::Tensor>& found_inf) {
  mark_written(params);
  mark_written(grads);
  TensorBatch batch("perturb", params.size());
  batch.add("params", params, Kind::kValues, Access::kWrite);
  batch.add("grads", grads, Kind::kValues, Access::kWrite);
  if (skipped("perturb", found_inf)) {
    for (const at::Tensor& g : grads) g.zero_();  // e = 0, p stays
    return;
  }
  Scalars s;
  s.scale = value_of("perturb", "scale", scale);
  s.adaptive = adaptive;
  run(kernels_for(batch).perturb, s, batch.spans());
  batch.finish();
}

// The scalars of the SASSHA step, as the reference computes them in Python (double); the
// kernels round them to their compute type.
Scalars step_scalars(const char* op, const at::Tensor& lr, double weight_decay, double beta1,
                     const at::Tensor& bias_correction1, const at::Tensor& bias_correction2,
                     double hessian_power, double eps) {
  const double lr_value = value_of(op, "lr", lr);
  Scalars s;
  s.decay = 1.0 - lr_value * weight_decay;
  s.beta1 = beta1;
  s.one_minus_beta1 = 1.0 - beta1;
  s.step_size = lr_value / value_of(op, "bias_correction1", bias_correction1);
  s.bias_correction2 = value_of(op, "bias_correction2", bias_correction2);
  s.hessian_power = hessian_power;
  s.eps = eps;
  return s;
}

void add_step_operands(TensorBatch& batch, TensorList params, TensorList grads,
                       TensorList exp_avgs, TensorList exp_hessians) {
  batch.add("params", params, Kind::kValues, Access::kWrite);
  batch.add("grads", grads, Kind::kValues, Access::kRead);
  batch.add("exp_avgs", exp_avgs, Kind::kState, Access::kWrite);
  batch.add("exp_hessians", exp_hessians, Kind::kState, Access::kRead);
}

// An op that updates its first list in place from itself and a second, read-only list.
Partial update_from(const char* op, const char* name, TensorList updated, Kind kind,
                    const char* source_name, TensorList source, bool skip,
                    RangeKernel OpKernels::*kernel, const Scalars& s) {
  TensorBatch batch(op, updated.size());
  batch.add(name, updated, kind, Access::kWrite);
  batch.add(source_name, source, Kind::kValues, Access::kRead);
  if (skip) return {};
  const Partial result = run(kernels_for(batch).*kernel, s, batch.spans());
  batch.finish();
  return result;
}

void run_add_scaled(TensorList params, TensorList tensors, double alpha) {
  Scalars s;
  s.alpha = alpha;
  update_from("add_scaled", "params", params, Kind::kValues, "tensors", tensors, false,
              &OpKernels::add_scaled, s);
}

void sassha_update(TensorList params, TensorList grads, TensorList exp_avgs,
                   TensorList exp_hessians, const OptionalList& perturbations,
                   const at::Tensor& lr, double weight_decay, double beta1,
                   const at::Tensor& bias_correction1, const at::Tensor& bias_correction2,
                   double hessian_power, double eps, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& wrote_nonfinite) {
  const at::Tensor* flag = nonfinite_flag("sassha_update", wrote_nonfinite);
  mark_written(params);
  mark_written(exp_avgs);
  TensorBatch batch("sassha_update", params.size());
  add_step_operands(batch, params, grads, exp_avgs, exp_hessians);
  if (perturbations) batch.add("perturbations", *perturbations, Kind::kValues, Access::kRead);
  if (skipped("sassha_update", found_inf)) {
    // m and D stay; p only leaves the perturbed point (p - e, as the step would start).
    if (perturbations) run_add_scaled(params, *perturbations, -1.0);
    return;
  }
  Scalars s = step_scalars("sassha_update", lr, weight_decay, beta1, bias_correction1,
                           bias_correction2, hessian_power, eps);
  s.leave_perturbation = perturbations.has_value();
  const Partial result = run(kernels_for(batch).sassha_update, s, batch.spans());
  batch.finish();
  report_nonfinite(flag, result.nonfinite);
}

void hessian_ema(TensorList exp_hessians, TensorList hessians, double beta2,
                 const std::optional<at::Tensor>& found_inf,
                 const std::optional<at::Tensor>& wrote_nonfinite) {
  const at::Tensor* flag = nonfinite_flag("hessian_ema", wrote_nonfinite);
  mark_written(exp_hessians);
  Scalars s;
  s.beta2 = beta2;
  s.one_minus_beta2 = 1.0 - beta2;
  const Partial result =
      update_from("hessian_ema", "exp_hessians", exp_hessians, Kind::kState, "hessians",
                  hessians, skipped("hessian_ema", found_inf), &OpKernels::hessian_ema, s);
  report_nonfinite(flag, result.nonfinite);
}

at::Tensor msassha_update(TensorList params, TensorList grads,
                          TensorList exp_avgs, TensorList exp_hessians,
                          const at::Tensor& norm_factor, const at::Tensor& lr,
                          double weight_decay, double beta1, const at::Tensor& bias_correction1,
                          const at::Tensor& bias_correction2, double hessian_power, double eps,
                          const std::optional<at::Tensor>& found_inf,
                          const std::optional<at::Tensor>& wrote_nonfinite) {
  const at::Tensor* flag = nonfinite_flag("msassha_update", wrote_nonfinite);
  mark_written(params);
  mark_written(exp_avgs);
  TensorBatch batch("msassha_update", params.size());
  add_step_operands(batch, params, grads, exp_avgs, exp_hessians);
  if (skipped("msassha_update", found_inf)) {
    // p, m and D stay; the sum of squares is that of the unchanged m.
    TensorBatch momenta("msassha_update", exp_avgs.size());
    momenta.add("exp_avgs", exp_avgs, Kind::kState, Access::kRead);
    return result_scalar(
        run(kernels_for(momenta).global_norm, Scalars{}, momenta.spans()).squares, batch);
  }
  Scalars s = step_scalars("msassha_update", lr, weight_decay, beta1, bias_correction1,
                           bias_correction2, hessian_power, eps);
  s.norm_factor = value_of("msassha_update", "norm_factor", norm_factor);
  const Partial result = run(kernels_for(batch).msassha_update, s, batch.spans());
  batch.finish();
  report_nonfinite(flag, result.nonfinite);
  return result_scalar(result.squares, batch);
}

void add_scaled(TensorList params, TensorList tensors, const at::Tensor& alpha) {
  mark_written(params);
  run_add_scaled(params, tensors, value_of("add_scaled", "alpha", alpha));
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(sassha_fast, CPU, m) {
  m.impl("global_norm", &cpu::global_norm);
  m.impl("perturb", &cpu::perturb);
  m.impl("sassha_update", &cpu::sassha_update);
  m.impl("hessian_ema", &cpu::hessian_ema);
  m.impl("msassha_update", &cpu::msassha_update);
  m.impl("add_scaled", &cpu::add_scaled);
}

void register_cpu_helpers(pybind11::module_& m) {
  m.def("cpu_isa", [] { return std::string(cpu::active_kernels().isa); },
        "the instruction set of the CPU kernels in use (avx512, avx2 or generic)");
}

}  // namespace sassha
