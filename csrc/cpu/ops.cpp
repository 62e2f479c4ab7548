// The fused SASSHA ops on CPU tensors (contracts: sassha_fast/backends/reference.py). Each
// call checks its lists, runs one multi-threaded pass over all their elements with the
// kernels for this CPU's instruction set, and holds no GIL while it does.
#include "ops.h"

#include <cmath>
#include <optional>
#include <variant>

#include "kernels.h"
#include "tensor_batch.h"

namespace sassha {
namespace cpu {
namespace {

using TensorList = std::vector<at::Tensor>;
// A per-step scalar: a number, or a one-element CPU tensor read here (never in Python).
using ScalarArg = std::variant<at::Tensor, double>;

double value_of(const char* op, const char* name, const ScalarArg& scalar) {
  if (const double* number = std::get_if<double>(&scalar)) return *number;
  const at::Tensor& t = std::get<at::Tensor>(scalar);
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is a tensor on ", t.device(),
              "; the cpu backend reads scalars from numbers or CPU tensors");
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

const OpKernels& kernels_for(const TensorBatch& batch) {
  return batch.fp64() ? active_kernels().fp64 : active_kernels().fp32;
}

// A sum of squares as the 0-d tensor an op returns: float64 for float64 lists, else fp32.
at::Tensor result_scalar(double value, const TensorBatch& batch) {
  return at::scalar_tensor(value, batch.fp64() ? at::kDouble : at::kFloat);
}

at::Tensor global_norm(const TensorList& tensors, const std::optional<TensorList>& weights) {
  check_plain("global_norm", "tensors", tensors);
  if (weights) check_plain("global_norm", "weights", *weights);
  pybind11::gil_scoped_release no_gil;
  TensorBatch batch("global_norm", tensors.size());
  batch.add("tensors", tensors, Kind::kValues, Access::kRead);
  Scalars s;
  if (weights) {
    batch.add("weights", *weights, Kind::kValues, Access::kRead);
    s.weighted = true;
  }
  return result_scalar(std::sqrt(run(kernels_for(batch).global_norm, s, batch.spans())), batch);
}

void perturb(const TensorList& params, const TensorList& grads, const ScalarArg& scale,
             bool adaptive, const std::optional<at::Tensor>& found_inf) {
  check_plain("perturb", "params", params);
  check_plain("perturb", "grads", grads);
  pybind11::gil_scoped_release no_gil;
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
Scalars step_scalars(const char* op, const ScalarArg& lr, double weight_decay, double beta1,
                     const ScalarArg& bias_correction1, const ScalarArg& bias_correction2,
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

void check_step_operands(const char* op, const TensorList& params, const TensorList& grads,
                         const TensorList& exp_avgs, const TensorList& exp_hessians) {
  check_plain(op, "params", params);
  check_plain(op, "grads", grads);
  check_plain(op, "exp_avgs", exp_avgs);
  check_plain(op, "exp_hessians", exp_hessians);
}

void add_step_operands(TensorBatch& batch, const TensorList& params, const TensorList& grads,
                       const TensorList& exp_avgs, const TensorList& exp_hessians) {
  batch.add("params", params, Kind::kValues, Access::kWrite);
  batch.add("grads", grads, Kind::kValues, Access::kRead);
  batch.add("exp_avgs", exp_avgs, Kind::kState, Access::kWrite);
  batch.add("exp_hessians", exp_hessians, Kind::kState, Access::kRead);
}

// An op that updates its first list in place from itself and a second, read-only list.
void update_from(const char* op, const char* name, const TensorList& updated, Kind kind,
                 const char* source_name, const TensorList& source, bool skip,
                 RangeKernel OpKernels::*kernel, const Scalars& s) {
  TensorBatch batch(op, updated.size());
  batch.add(name, updated, kind, Access::kWrite);
  batch.add(source_name, source, Kind::kValues, Access::kRead);
  if (skip) return;
  run(kernels_for(batch).*kernel, s, batch.spans());
  batch.finish();
}

// add_scaled once the tensors' Python types are checked and the GIL released.
void run_add_scaled(const TensorList& params, const TensorList& tensors, double alpha) {
  Scalars s;
  s.alpha = alpha;
  update_from("add_scaled", "params", params, Kind::kValues, "tensors", tensors, false,
              &OpKernels::add_scaled, s);
}

void sassha_update(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                   const TensorList& exp_hessians, const std::optional<TensorList>& perturbations,
                   const ScalarArg& lr, double weight_decay, double beta1,
                   const ScalarArg& bias_correction1, const ScalarArg& bias_correction2,
                   double hessian_power, double eps, const std::optional<at::Tensor>& found_inf) {
  check_step_operands("sassha_update", params, grads, exp_avgs, exp_hessians);
  if (perturbations) check_plain("sassha_update", "perturbations", *perturbations);
  pybind11::gil_scoped_release no_gil;
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
  run(kernels_for(batch).sassha_update, s, batch.spans());
  batch.finish();
}

void hessian_ema(const TensorList& exp_hessians, const TensorList& hessians, double beta2,
                 const std::optional<at::Tensor>& found_inf) {
  check_plain("hessian_ema", "exp_hessians", exp_hessians);
  check_plain("hessian_ema", "hessians", hessians);
  pybind11::gil_scoped_release no_gil;
  Scalars s;
  s.beta2 = beta2;
  s.one_minus_beta2 = 1.0 - beta2;
  update_from("hessian_ema", "exp_hessians", exp_hessians, Kind::kState, "hessians", hessians,
              skipped("hessian_ema", found_inf), &OpKernels::hessian_ema, s);
}

at::Tensor msassha_update(const TensorList& params, const TensorList& grads,
                          const TensorList& exp_avgs, const TensorList& exp_hessians,
                          const ScalarArg& norm_factor, const ScalarArg& lr,
                          double weight_decay, double beta1, const ScalarArg& bias_correction1,
                          const ScalarArg& bias_correction2, double hessian_power, double eps,
                          const std::optional<at::Tensor>& found_inf) {
  check_step_operands("msassha_update", params, grads, exp_avgs, exp_hessians);
  pybind11::gil_scoped_release no_gil;
  TensorBatch batch("msassha_update", params.size());
  add_step_operands(batch, params, grads, exp_avgs, exp_hessians);
  if (skipped("msassha_update", found_inf)) {
    // p, m and D stay; the sum of squares is that of the unchanged m.
    TensorBatch momenta("msassha_update", exp_avgs.size());
    momenta.add("exp_avgs", exp_avgs, Kind::kState, Access::kRead);
    return result_scalar(run(kernels_for(momenta).global_norm, Scalars{}, momenta.spans()),
                         batch);
  }
  Scalars s = step_scalars("msassha_update", lr, weight_decay, beta1, bias_correction1,
                           bias_correction2, hessian_power, eps);
  s.norm_factor = value_of("msassha_update", "norm_factor", norm_factor);
  const double squares = run(kernels_for(batch).msassha_update, s, batch.spans());
  batch.finish();
  return result_scalar(squares, batch);
}

void add_scaled(const TensorList& params, const TensorList& tensors, const ScalarArg& alpha) {
  check_plain("add_scaled", "params", params);
  check_plain("add_scaled", "tensors", tensors);
  pybind11::gil_scoped_release no_gil;
  run_add_scaled(params, tensors, value_of("add_scaled", "alpha", alpha));
}

}  // namespace
}  // namespace cpu

void register_cpu_ops(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  // Each op releases the GIL itself, once it has checked its tensors' Python types.
  m.def("global_norm_cpu", &cpu::global_norm,
        "sqrt(sum ||w*t||^2) as a 0-d tensor (float64 for float64 tensors, else fp32)",
        arg("tensors"), arg("weights") = py::none());
  m.def("perturb_cpu", &cpu::perturb, "e = s*g (*p^2) into g, p += e", arg("params"),
        arg("grads"), arg("scale"), arg("adaptive"), arg("found_inf") = py::none());
  m.def("sassha_update_cpu", &cpu::sassha_update, "leave p - e, SASSHA step", arg("params"),
        arg("grads"), arg("exp_avgs"), arg("exp_hessians"), arg("perturbations"), arg("lr"),
        arg("weight_decay"), arg("beta1"), arg("bias_correction1"), arg("bias_correction2"),
        arg("hessian_power"), arg("eps"), arg("found_inf") = py::none());
  m.def("hessian_ema_cpu", &cpu::hessian_ema, "D = b2*D + (1-b2)*|h|", arg("exp_hessians"),
        arg("hessians"), arg("beta2"), arg("found_inf") = py::none());
  m.def("msassha_update_cpu", &cpu::msassha_update,
        "leave p + nf*m, SASSHA step; returns sum ||m||^2", arg("params"), arg("grads"),
        arg("exp_avgs"), arg("exp_hessians"), arg("norm_factor"), arg("lr"),
        arg("weight_decay"), arg("beta1"), arg("bias_correction1"), arg("bias_correction2"),
        arg("hessian_power"), arg("eps"), arg("found_inf") = py::none());
  m.def("add_scaled_cpu", &cpu::add_scaled, "p += alpha * t", arg("params"), arg("tensors"),
        arg("alpha"));
  m.def("cpu_isa", [] { return std::string(cpu::active_kernels().isa); },
        "the instruction set of the CPU kernels in use (avx512, avx2 or generic)");
}

}  // namespace sassha
