// The extension module sassha_fast._C. Loading it registers the ops torch.ops.sassha_fast.<op>
// (csrc/schema.cpp) with their CPU kernels, and their CUDA kernels when built with them; the
// module itself holds only what is not an op: the facts of the build and the CPU kernels'
// instruction set (and, with CUDA, the launcher's plans for inspection).
#include <torch/extension.h>

#include "build_status.h"
#include "cpu/ops.h"
#ifdef SASSHA_WITH_CUDA
#include "cuda/ops.h"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  sassha::register_cpu_helpers(m);
#ifdef SASSHA_WITH_CUDA
  sassha::register_cuda_helpers(m);
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
