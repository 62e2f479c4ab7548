#pragma once
#include <torch/extension.h>

namespace sassha {
// Adds the CUDA ops to the extension module.
void register_cuda_ops(pybind11::module_& m);
}  // namespace sassha
