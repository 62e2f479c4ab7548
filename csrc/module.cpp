// The extension module sassha_fast._C: the CPU ops always, the CUDA ops when built with them.
#include <torch/extension.h>

#include "build_status.h"
#include "cpu/ops.h"
#ifdef SASSHA_WITH_CUDA
#include "cuda/ops.h"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  sassha::register_cpu_ops(m);
#ifdef SASSHA_WITH_CUDA
  sassha::register_cuda_ops(m);
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_status") = SASSHA_CUDA_STATUS;
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
