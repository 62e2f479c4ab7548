// p += alpha * t over a list of fp32 CUDA tensors (the plumbing's proof of life; the fused
// multi-tensor kernels replace it).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops.h"

namespace sassha {
namespace {

__global__ void add_scaled_kernel(float* p, const float* t, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    p[i] += alpha * t[i];
  }
}

void add_scaled_cuda(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& tensors,
                     double alpha) {
  TORCH_CHECK(params.size() == tensors.size(), "add_scaled: lists differ in length");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& t = tensors[i];
    TORCH_CHECK(p.is_cuda() && t.is_cuda(), "add_scaled: CUDA tensors only");
    TORCH_CHECK(p.scalar_type() == at::kFloat && t.scalar_type() == at::kFloat,
                "add_scaled: fp32 tensors only");
    TORCH_CHECK(p.is_contiguous() && t.is_contiguous() && p.numel() == t.numel(),
                "add_scaled: contiguous tensors of equal size only");
    const int64_t n = p.numel();
    if (n == 0) continue;
    c10::cuda::CUDAGuard guard(p.device());
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 4096));
    add_scaled_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p.data_ptr<float>(), t.data_ptr<float>(), static_cast<float>(alpha), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void register_cuda_ops(pybind11::module_& m) {
  m.def("add_scaled_cuda", &add_scaled_cuda, "p += alpha * t (fp32, CUDA)",
        pybind11::arg("params"), pybind11::arg("tensors"), pybind11::arg("alpha"));
}

}  // namespace sassha
