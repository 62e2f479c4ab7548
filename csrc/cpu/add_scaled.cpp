// p += alpha * t over a list of fp32 CPU tensors (the plumbing's proof of life; the fused
// multi-tensor kernels replace it).
#include <omp.h>

#include "ops.h"

namespace sassha {
namespace {

void add_scaled_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& tensors,
                    double alpha) {
  TORCH_CHECK(params.size() == tensors.size(), "add_scaled: lists differ in length");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& t = tensors[i];
    TORCH_CHECK(p.device().is_cpu() && t.device().is_cpu(), "add_scaled: CPU tensors only");
    TORCH_CHECK(p.scalar_type() == at::kFloat && t.scalar_type() == at::kFloat,
                "add_scaled: fp32 tensors only");
    TORCH_CHECK(p.is_contiguous() && t.is_contiguous() && p.numel() == t.numel(),
                "add_scaled: contiguous tensors of equal size only");
    float* pd = p.data_ptr<float>();
    const float* td = t.data_ptr<float>();
    const int64_t n = p.numel();
    const float a = static_cast<float>(alpha);
#pragma omp parallel for if (n > 65536)
    for (int64_t j = 0; j < n; ++j) pd[j] += a * td[j];
  }
}

}  // namespace

void register_cpu_ops(pybind11::module_& m) {
  m.def("add_scaled_cpu", &add_scaled_cpu, "p += alpha * t (fp32, CPU)",
        pybind11::arg("params"), pybind11::arg("tensors"), pybind11::arg("alpha"),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace sassha
