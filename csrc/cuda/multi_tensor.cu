// The second stage of the launcher's reductions (the first is in multi_tensor_kernel), and
// the choice of kernel argument size.
#include "multi_tensor.cuh"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads)
    finish_sum_kernel(const float* partial_sums, int64_t count, bool take_sqrt, float* result) {
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) sum += partial_sums[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *result = take_sqrt ? sqrtf(sum) : sum;
}

}  // namespace

int kernel_arg_bytes() {
#if defined(SASSHA_CUDA_HOST_EMULATION)
  return emulation::arg_bytes;
#elif SASSHA_LARGE_KERNEL_ARGS
  static const int bytes = [] {
    int driver = 0;
    return cudaDriverGetVersion(&driver) == cudaSuccess && driver >= 12010 ? kLargeArgBytes
                                                                            : kSmallArgBytes;
  }();
  return bytes;
#else
  return kSmallArgBytes;
#endif
}

void finish_sum(const float* partial_sums, int64_t count, bool take_sqrt, float* result) {
  launch_kernel(finish_sum_kernel, 1, current_stream(), partial_sums, count, take_sqrt, result);
}

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
