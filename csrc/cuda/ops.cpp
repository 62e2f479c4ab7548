// The CUDA kernels of the ops torch.ops.sassha_fast.<op> (schemas: csrc/schema.cpp): each
// checks its arguments (a clear error instead of a wrong memory access), turns the scalar
// tensors into DeviceScalars and runs the fused op (fused_ops.cu). The dispatcher sends here
// only calls with a CUDA tensor among their arguments, and sends tensor subclasses (DTensor,
// FakeTensor) and meta tensors elsewhere first. The launcher's plans are exposed in
// sassha_fast._C for inspection (helpers.cpp).
//
// Compiled for the host (SASSHA_CUDA_HOST_EMULATION, csrc/cuda_emulation/), the same kernels
// serve the test-only ops torch.ops.sassha_fast_cuda_emulated.<op> on CPU tensors.
#include "ops.h"

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/library.h>
#ifndef SASSHA_CUDA_HOST_EMULATION
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "../written.h"
#include "fused_ops.h"
#include "launch_plan.h"
#ifdef SASSHA_CUDA_HOST_EMULATION
#include "host_emulation.h"
#endif

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace {

using cuda::DeviceScalar;
using cuda::StepHyper;
using cuda::TensorList;
using OptionalList = std::optional<TensorList>;
// Lists as the dispatcher passes them.
using ListArg = at::TensorList;
using OptionalListArg = std::optional<at::TensorList>;

// Where the kernels' tensors live, and what the errors call the kernels.
#ifdef SASSHA_CUDA_HOST_EMULATION
#define SASSHA_CUDA_OPS_LIBRARY sassha_fast_cuda_emulated
#define SASSHA_CUDA_OPS_KEY CPU
#define OP_NAME(name) "cuda_emulated " name " (the CUDA kernels emulated on the host)"
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
at::Device kernel_device() { return at::kCPU; }
#else
#define SASSHA_CUDA_OPS_LIBRARY sassha_fast
#define SASSHA_CUDA_OPS_KEY CUDA
#define OP_NAME(name) name
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
at::Device kernel_device() { return {at::kCUDA, c10::cuda::current_device()}; }
#endif

struct NamedList {
  const char* name;
  const TensorList& tensors;
};

// Same element order in memory: equal sizes, and equal strides wherever a size is above 1.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t dim = 0; dim < a.dim(); ++dim) {
    if (a.size(dim) > 1 && a.stride(dim) != b.stride(dim)) return false;
  }
  return true;
}

// A tensor off the GPU (a CPU tensor in a call the dispatcher sent here for another of its
// tensors) is refused before anything touches it.
void check_on_kernel_device(const char* op, std::initializer_list<NamedList> lists) {
  for (const NamedList& list : lists) {
    for (size_t i = 0; i < list.tensors.size(); ++i) {
      TORCH_CHECK(list.tensors[i].device().type() == kKernelDevice, op, ": every tensor of "
                  "one op must be on one device; ", list.name, "[", i, "] is on ",
                  list.tensors[i].device());
    }
  }
}

// A zero 0-d fp32 tensor on the current CUDA device: the result of a reduction over nothing.
at::Tensor device_zero() {
  return at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(kernel_device()));
}

// What the kernels rely on: every list as long as the first; tensor i of every list on the
// first tensor's CUDA device, dense, and laid out like tensor i of the first list (a kernel
// walks them all in memory order).
void check_lists(const char* op, std::initializer_list<NamedList> lists) {
  const NamedList& lead = *lists.begin();
  for (const NamedList& list : lists) {
    TORCH_CHECK(list.tensors.size() == lead.tensors.size(), op, ": ", list.name, " holds ",
                list.tensors.size(), " tensors but ", lead.name, " holds ", lead.tensors.size());
  }
  if (lead.tensors.empty()) return;
  const at::Device device = lead.tensors[0].device();
  TORCH_CHECK(device.type() == kKernelDevice, op, ": its kernels take ", kKernelDevice,
              " tensors, got ", lead.name, " on ", device);
  for (size_t i = 0; i < lead.tensors.size(); ++i) {
    const at::Tensor& first = lead.tensors[i];
    for (const NamedList& list : lists) {
      const at::Tensor& t = list.tensors[i];
      TORCH_CHECK(t.device() == device, op, ": ", list.name, "[", i, "] is on ", t.device(),
                  " but ", lead.name, "[0] is on ", device);
      TORCH_CHECK(t.is_non_overlapping_and_dense(), op, ": ", list.name, "[", i,
                  "] is not dense in memory (a strided or expanded view); the fused kernels "
                  "update dense tensors only");
      TORCH_CHECK(same_layout(t, first), op, ": ", list.name, "[", i, "] (sizes ", t.sizes(),
                  ", strides ", t.strides(), ") is not laid out like ", lead.name, "[", i,
                  "] (sizes ", first.sizes(), ", strides ", first.strides(), ")");
    }
  }
}

// A read-only input in the layout of lead[i]: the tensor itself, or a copy where it is laid
// out otherwise (autograd may return a gradient or a Hessian estimate in another layout than
// its parameter's). Tensors that cannot be matched are left for check_lists to report.
TensorList in_layout_of(const TensorList& lead, const TensorList& tensors) {
  if (tensors.size() != lead.size()) return tensors;
  TensorList matched;
  matched.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const bool fits = t.is_non_overlapping_and_dense() && same_layout(t, lead[i]);
    if (fits || t.device() != lead[i].device() || t.sizes() != lead[i].sizes() ||
        !lead[i].is_non_overlapping_and_dense()) {
      matched.push_back(t);
    } else {
      at::Tensor copy = at::empty_strided(lead[i].sizes(), lead[i].strides(), t.options());
      matched.push_back(copy.copy_(t));
    }
  }
  return matched;
}

// A read-only input made dense where it is not.
TensorList dense(const TensorList& tensors) {
  TensorList out;
  out.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    out.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  }
  return out;
}

void check_dtype(const char* op, const NamedList& list, at::ScalarType dtype) {
  for (size_t i = 0; i < list.tensors.size(); ++i) {
    TORCH_CHECK(list.tensors[i].scalar_type() == dtype, op, ": ", list.name, "[", i, "] is ",
                list.tensors[i].scalar_type(), ", expected ", dtype);
  }
}

// The dtype that every tensor of the list has: fp32, bf16 or fp16.
at::ScalarType float_dtype(const char* op, const NamedList& list) {
  if (list.tensors.empty()) return at::kFloat;
  const at::ScalarType dtype = list.tensors[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": ",
              list.name, " must be fp32, bf16 or fp16 tensors, got ", dtype);
  check_dtype(op, list, dtype);
  return dtype;
}

// Whether a scalar tensor is read on the host rather than by the kernel. Under the host
// emulation every tensor is on the CPU: the numbers that dispatcher_ops.py passes (float64
// tensors) stand for host values and every other tensor for a device tensor, so that tests
// run both paths.
bool read_on_host(const at::Tensor& t) {
#ifdef SASSHA_CUDA_HOST_EMULATION
  return t.scalar_type() == at::kDouble;
#else
  return t.is_cpu();
#endif
}

// A per-step scalar as the kernels read it: the value of a CPU tensor (a number arrives as
// one; reading it costs no synchronisation), or the address of a one-element tensor on the
// tensors' device, read when the kernel runs. A device tensor of another floating dtype (the
// float64 step counters) is read through an fp32 copy that `keep` holds until the op has
// queued its kernels: freed earlier, its memory could be handed to a tensor this op writes.
DeviceScalar device_scalar(const char* op, const char* name, const at::Tensor& t,
                           const TensorList& like, TensorList& keep) {
  TORCH_CHECK(t.numel() == 1 && t.is_floating_point(), op, ": ", name, " must be a number or "
              "a one-element floating-point tensor, got a ", t.scalar_type(), " tensor of ",
              t.numel(), " elements");
  if (read_on_host(t)) return {nullptr, static_cast<float>(t.item<double>())};
  if (like.empty()) return {nullptr, 0.f};  // nothing will be launched
  TORCH_CHECK(t.device() == like[0].device(), op, ": ", name, " is a tensor on ", t.device(),
              "; the op's tensors are on ", like[0].device(), " (a scalar tensor is read on "
              "their device or, from the CPU, on the host)");
  if (t.scalar_type() == at::kFloat) return {t.data_ptr<float>(), 0.f};
  keep.push_back(t.to(at::kFloat));
  return {keep.back().data_ptr<float>(), 0.f};
}

// found_inf as the kernels read it: nullptr (never skipped) or the address of a one-element
// fp32 tensor on the tensors' device.
const float* found_inf_pointer(const char* op, const std::optional<at::Tensor>& found_inf,
                               const TensorList& like) {
  if (!found_inf || like.empty()) return nullptr;
  const at::Tensor& t = *found_inf;
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == like[0].device(),
              op, ": found_inf must be None or a one-element fp32 tensor on ", like[0].device(),
              ", got a ", t.scalar_type(), " tensor of ", t.numel(), " elements on ", t.device());
  return t.data_ptr<float>();
}

// wrote_nonfinite as the updates write it: nullptr (not asked for) or the address of a
// one-element fp32 tensor on the tensors' device.
float* wrote_nonfinite_pointer(const char* op, const std::optional<at::Tensor>& wrote_nonfinite,
                               const TensorList& like) {
  if (!wrote_nonfinite || like.empty()) return nullptr;
  const at::Tensor& t = *wrote_nonfinite;
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == like[0].device(),
              op, ": wrote_nonfinite must be None or a one-element fp32 tensor on ",
              like[0].device(), ", got a ", t.scalar_type(), " tensor of ", t.numel(),
              " elements on ", t.device());
  return t.data_ptr<float>();
}

StepHyper step_hyper(const char* op, const TensorList& params, const at::Tensor& lr,
                     double weight_decay, double beta1, const at::Tensor& bias_correction1,
                     const at::Tensor& bias_correction2, double hessian_power, double eps,
                     TensorList& keep) {
  return {device_scalar(op, "lr", lr, params, keep),
          device_scalar(op, "bias_correction1", bias_correction1, params, keep),
          device_scalar(op, "bias_correction2", bias_correction2, params, keep),
          static_cast<float>(weight_decay),
          static_cast<float>(beta1),
          static_cast<float>(1.0 - beta1),
          static_cast<float>(hessian_power),
          static_cast<float>(eps)};
}

at::Tensor global_norm_op(ListArg tensors_arg, const OptionalListArg& weights_arg) {
  constexpr const char* op = OP_NAME("global_norm");
  const TensorList tensors = tensors_arg.vec();
  const TensorList weights = weights_arg ? weights_arg->vec() : TensorList{};
  check_on_kernel_device(op, {{"tensors", tensors}, {"weights", weights}});
  const TensorList values = dense(tensors);
  const OptionalList weights_in_layout =
      weights_arg ? OptionalList(in_layout_of(values, weights)) : std::nullopt;
  if (weights_in_layout) {
    check_lists(op, {{"tensors", values}, {"weights", *weights_in_layout}});
    float_dtype(op, {"weights", *weights_in_layout});
  } else {
    check_lists(op, {{"tensors", values}});
  }
  float_dtype(op, {"tensors", values});
  if (values.empty()) return device_zero();
  return cuda::global_norm(values, weights_in_layout ? &*weights_in_layout : nullptr);
}

void perturb_op(ListArg params_arg, ListArg grads_arg, const at::Tensor& scale, bool adaptive,
                const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = OP_NAME("perturb");
  const TensorList params = params_arg.vec(), grads = grads_arg.vec();
  mark_written(params_arg);
  mark_written(grads_arg);
  check_on_kernel_device(op, {{"params", params}, {"grads", grads}});
  check_lists(op, {{"params", params}, {"grads", grads}});
  check_dtype(op, {"grads", grads}, float_dtype(op, {"params", params}));
  TensorList keep;
  cuda::perturb(params, grads, device_scalar(op, "scale", scale, params, keep), adaptive,
                found_inf_pointer(op, found_inf, params));
}

// Checks the lists of a SASSHA or M-SASSHA update (the grads already in the params' layout).
void check_update_lists(const char* op, const TensorList& params, const TensorList& grads,
                        const TensorList& exp_avgs, const TensorList& exp_hessians) {
  check_lists(op, {{"params", params},
                   {"grads", grads},
                   {"exp_avgs", exp_avgs},
                   {"exp_hessians", exp_hessians}});
  check_dtype(op, {"grads", grads}, float_dtype(op, {"params", params}));
  check_dtype(op, {"exp_avgs", exp_avgs}, at::kFloat);
  check_dtype(op, {"exp_hessians", exp_hessians}, at::kFloat);
}

void sassha_update_op(ListArg params_arg, ListArg grads_arg, ListArg exp_avgs_arg,
                      ListArg exp_hessians_arg, const OptionalListArg& perturbations_arg,
                      const at::Tensor& lr, double weight_decay, double beta1,
                      const at::Tensor& bias_correction1, const at::Tensor& bias_correction2,
                      double hessian_power, double eps,
                      const std::optional<at::Tensor>& found_inf,
                      const std::optional<at::Tensor>& wrote_nonfinite) {
  constexpr const char* op = OP_NAME("sassha_update");
  const TensorList params = params_arg.vec(), grads = grads_arg.vec(),
                   exp_avgs = exp_avgs_arg.vec(), exp_hessians = exp_hessians_arg.vec(),
                   perturbations = perturbations_arg ? perturbations_arg->vec() : TensorList{};
  mark_written(params_arg);
  mark_written(exp_avgs_arg);
  check_on_kernel_device(op, {{"params", params},
                    {"grads", grads},
                    {"exp_avgs", exp_avgs},
                    {"exp_hessians", exp_hessians},
                    {"perturbations", perturbations}});
  const TensorList grads_in_layout = in_layout_of(params, grads);
  check_update_lists(op, params, grads_in_layout, exp_avgs, exp_hessians);
  const OptionalList perturbations_in_layout =
      perturbations_arg ? OptionalList(in_layout_of(params, perturbations)) : std::nullopt;
  if (perturbations_in_layout) {
    check_lists(op, {{"params", params}, {"perturbations", *perturbations_in_layout}});
    check_dtype(op, {"perturbations", *perturbations_in_layout},
                float_dtype(op, {"params", params}));
  }
  TensorList keep;
  cuda::sassha_update(params, grads_in_layout, exp_avgs, exp_hessians,
                      perturbations_in_layout ? &*perturbations_in_layout : nullptr,
                      step_hyper(op, params, lr, weight_decay, beta1, bias_correction1,
                                 bias_correction2, hessian_power, eps, keep),
                      found_inf_pointer(op, found_inf, params),
                      wrote_nonfinite_pointer(op, wrote_nonfinite, params));
}

void hessian_ema_op(ListArg exp_hessians_arg, ListArg hessians_arg, double beta2,
                    const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& wrote_nonfinite) {
  constexpr const char* op = OP_NAME("hessian_ema");
  const TensorList exp_hessians = exp_hessians_arg.vec(), hessians = hessians_arg.vec();
  mark_written(exp_hessians_arg);
  check_on_kernel_device(op, {{"exp_hessians", exp_hessians}, {"hessians", hessians}});
  const TensorList hessians_in_layout = in_layout_of(exp_hessians, hessians);
  check_lists(op, {{"exp_hessians", exp_hessians}, {"hessians", hessians_in_layout}});
  check_dtype(op, {"exp_hessians", exp_hessians}, at::kFloat);
  float_dtype(op, {"hessians", hessians_in_layout});
  cuda::hessian_ema(exp_hessians, hessians_in_layout, static_cast<float>(beta2),
                    static_cast<float>(1.0 - beta2),
                    found_inf_pointer(op, found_inf, exp_hessians),
                    wrote_nonfinite_pointer(op, wrote_nonfinite, exp_hessians));
}

at::Tensor msassha_update_op(ListArg params_arg, ListArg grads_arg, ListArg exp_avgs_arg,
                             ListArg exp_hessians_arg, const at::Tensor& norm_factor,
                             const at::Tensor& lr, double weight_decay, double beta1,
                             const at::Tensor& bias_correction1,
                             const at::Tensor& bias_correction2, double hessian_power,
                             double eps, const std::optional<at::Tensor>& found_inf,
                             const std::optional<at::Tensor>& wrote_nonfinite) {
  constexpr const char* op = OP_NAME("msassha_update");
  const TensorList params = params_arg.vec(), grads = grads_arg.vec(),
                   exp_avgs = exp_avgs_arg.vec(), exp_hessians = exp_hessians_arg.vec();
  mark_written(params_arg);
  mark_written(exp_avgs_arg);
  check_on_kernel_device(op, {{"params", params},
                    {"grads", grads},
                    {"exp_avgs", exp_avgs},
                    {"exp_hessians", exp_hessians}});
  const TensorList grads_in_layout = in_layout_of(params, grads);
  check_update_lists(op, params, grads_in_layout, exp_avgs, exp_hessians);
  if (params.empty()) return device_zero();
  TensorList keep;
  return cuda::msassha_update(
      params, grads_in_layout, exp_avgs, exp_hessians,
      device_scalar(op, "norm_factor", norm_factor, params, keep),
      step_hyper(op, params, lr, weight_decay, beta1, bias_correction1, bias_correction2,
                 hessian_power, eps, keep),
      found_inf_pointer(op, found_inf, params),
      wrote_nonfinite_pointer(op, wrote_nonfinite, params));
}

void add_scaled_op(ListArg params_arg, ListArg tensors_arg, const at::Tensor& alpha) {
  constexpr const char* op = OP_NAME("add_scaled");
  const TensorList params = params_arg.vec(), tensors = tensors_arg.vec();
  mark_written(params_arg);
  check_on_kernel_device(op, {{"params", params}, {"tensors", tensors}});
  const TensorList tensors_in_layout = in_layout_of(params, tensors);
  check_lists(op, {{"params", params}, {"tensors", tensors_in_layout}});
  float_dtype(op, {"params", params});
  float_dtype(op, {"tensors", tensors_in_layout});
  TensorList keep;
  cuda::add_scaled(params, tensors_in_layout, device_scalar(op, "alpha", alpha, params, keep));
}

}  // namespace

TORCH_LIBRARY_IMPL(SASSHA_CUDA_OPS_LIBRARY, SASSHA_CUDA_OPS_KEY, m) {
  m.impl("global_norm", &global_norm_op);
  m.impl("perturb", &perturb_op);
  m.impl("sassha_update", &sassha_update_op);
  m.impl("hessian_ema", &hessian_ema_op);
  m.impl("msassha_update", &msassha_update_op);
  m.impl("add_scaled", &add_scaled_op);
}

#ifdef SASSHA_CUDA_HOST_EMULATION
// Tests choose the argument layout that the emulated launches take: a real device has one.
TORCH_LIBRARY_FRAGMENT(sassha_fast_cuda_emulated, m) {
  m.def("set_kernel_arg_bytes(int arg_bytes) -> int", [](int64_t arg_bytes) -> int64_t {
    TORCH_CHECK(arg_bytes == cuda::kSmallArgBytes || arg_bytes == cuda::kLargeArgBytes,
                "cuda_emulated: kernel arguments take ", cuda::kSmallArgBytes, " or ",
                cuda::kLargeArgBytes, " bytes, not ", arg_bytes);
    const int64_t previous = cuda::emulation::arg_bytes;
    cuda::emulation::arg_bytes = static_cast<int>(arg_bytes);
    return previous;
  });
  m.def("launches() -> int", []() -> int64_t { return cuda::emulation::launches; });
}
#endif  // SASSHA_CUDA_HOST_EMULATION

}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
