// The fused SASSHA ops on CPU tensors (contracts: sassha_fast/backends/reference.py). Each
// call checks its lists, runs one multi-threaded pass over all their elements with the
// kernels for this CPU's instruction set, and holds no GIL while it does.
#include "ops.h"

#include <cmath>
#include <optional>

#include "kernels.h"
#include "tensor_batch.h"

namespace sassha {
namespace cpu {
namespace {

using TensorList = std::vector<at::Tensor>;

at::Tensor fp32_scalar(double value) { return at::scalar_tensor(value, at::kFloat); }

at::Tensor global_norm(const TensorList& tensors, const std::optional<TensorList>& weights) {
  TensorBatch batch("global_norm", tensors.size());
  batch.add("tensors", tensors, Kind::kValues, Access::kRead);
  Scalars s;
  if (weights) {
    batch.add("weights", *weights, Kind::kValues, Access::kRead);
    s.weighted = true;
  }
  return fp32_scalar(std::sqrt(run(active_kernels().global_norm, s, batch.spans())));
}

void perturb(const TensorList& params, const TensorList& grads, double scale, bool adaptive) {
  TensorBatch batch("perturb", params.size());
  batch.add("params", params, Kind::kValues, Access::kWrite);
  batch.add("grads", grads, Kind::kValues, Access::kWrite);
  Scalars s;
  s.scale = static_cast<float>(scale);
  s.adaptive = adaptive;
  run(active_kernels().perturb, s, batch.spans());
  batch.finish();
}

// The scalars of the SASSHA step, as the reference computes them in Python (double) and
// applies them to fp32 tensors.
Scalars step_scalars(double lr, double weight_decay, double beta1, double bias_correction1,
                     double bias_correction2, double hessian_power, double eps) {
  Scalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.beta1 = static_cast<float>(beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.step_size = static_cast<float>(lr / bias_correction1);
  s.bias_correction2 = static_cast<float>(bias_correction2);
  s.hessian_power = static_cast<float>(hessian_power);
  s.eps = static_cast<float>(eps);
  return s;
}

void add_step_operands(TensorBatch& batch, const TensorList& params, const TensorList& grads,
                       const TensorList& exp_avgs, const TensorList& exp_hessians) {
  batch.add("params", params, Kind::kValues, Access::kWrite);
  batch.add("grads", grads, Kind::kValues, Access::kRead);
  batch.add("exp_avgs", exp_avgs, Kind::kState, Access::kWrite);
  batch.add("exp_hessians", exp_hessians, Kind::kState, Access::kRead);
}

void sassha_update(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                   const TensorList& exp_hessians, const std::optional<TensorList>& perturbations,
                   double lr, double weight_decay, double beta1, double bias_correction1,
                   double bias_correction2, double hessian_power, double eps) {
  TensorBatch batch("sassha_update", params.size());
  add_step_operands(batch, params, grads, exp_avgs, exp_hessians);
  Scalars s = step_scalars(lr, weight_decay, beta1, bias_correction1, bias_correction2,
                           hessian_power, eps);
  if (perturbations) {
    batch.add("perturbations", *perturbations, Kind::kValues, Access::kRead);
    s.leave_perturbation = true;
  }
  run(active_kernels().sassha_update, s, batch.spans());
  batch.finish();
}

// An op that updates its first list in place from itself and a second, read-only list.
void update_from(const char* op, const char* name, const TensorList& updated, Kind kind,
                 const char* source_name, const TensorList& source, RangeKernel kernel,
                 const Scalars& s) {
  TensorBatch batch(op, updated.size());
  batch.add(name, updated, kind, Access::kWrite);
  batch.add(source_name, source, Kind::kValues, Access::kRead);
  run(kernel, s, batch.spans());
  batch.finish();
}

void hessian_ema(const TensorList& exp_hessians, const TensorList& hessians, double beta2) {
  Scalars s;
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  update_from("hessian_ema", "exp_hessians", exp_hessians, Kind::kState, "hessians", hessians,
              active_kernels().hessian_ema, s);
}

at::Tensor msassha_update(const TensorList& params, const TensorList& grads,
                          const TensorList& exp_avgs, const TensorList& exp_hessians,
                          double norm_factor, double lr, double weight_decay, double beta1,
                          double bias_correction1, double bias_correction2,
                          double hessian_power, double eps) {
  TensorBatch batch("msassha_update", params.size());
  add_step_operands(batch, params, grads, exp_avgs, exp_hessians);
  Scalars s = step_scalars(lr, weight_decay, beta1, bias_correction1, bias_correction2,
                           hessian_power, eps);
  s.norm_factor = static_cast<float>(norm_factor);
  const double squares = run(active_kernels().msassha_update, s, batch.spans());
  batch.finish();
  return fp32_scalar(squares);
}

void add_scaled(const TensorList& params, const TensorList& tensors, double alpha) {
  Scalars s;
  s.alpha = static_cast<float>(alpha);
  update_from("add_scaled", "params", params, Kind::kValues, "tensors", tensors,
              active_kernels().add_scaled, s);
}

}  // namespace
}  // namespace cpu

void register_cpu_ops(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("global_norm_cpu", &cpu::global_norm, "sqrt(sum ||w*t||^2) as a 0-d fp32 tensor",
        arg("tensors"), arg("weights") = py::none(), no_gil);
  m.def("perturb_cpu", &cpu::perturb, "e = s*g (*p^2) into g, p += e", arg("params"),
        arg("grads"), arg("scale"), arg("adaptive"), no_gil);
  m.def("sassha_update_cpu", &cpu::sassha_update, "leave p - e, SASSHA step", arg("params"),
        arg("grads"), arg("exp_avgs"), arg("exp_hessians"), arg("perturbations"), arg("lr"),
        arg("weight_decay"), arg("beta1"), arg("bias_correction1"), arg("bias_correction2"),
        arg("hessian_power"), arg("eps"), no_gil);
  m.def("hessian_ema_cpu", &cpu::hessian_ema, "D = b2*D + (1-b2)*|h|", arg("exp_hessians"),
        arg("hessians"), arg("beta2"), no_gil);
  m.def("msassha_update_cpu", &cpu::msassha_update,
        "leave p + nf*m, SASSHA step; returns sum ||m||^2", arg("params"), arg("grads"),
        arg("exp_avgs"), arg("exp_hessians"), arg("norm_factor"), arg("lr"),
        arg("weight_decay"), arg("beta1"), arg("bias_correction1"), arg("bias_correction2"),
        arg("hessian_power"), arg("eps"), no_gil);
  m.def("add_scaled_cpu", &cpu::add_scaled, "p += alpha * t", arg("params"), arg("tensors"),
        arg("alpha"), no_gil);
  m.def("cpu_isa", [] { return std::string(cpu::active_kernels().isa); },
        "the instruction set of the CPU kernels in use (avx512, avx2 or generic)");
}

}  // namespace sassha
