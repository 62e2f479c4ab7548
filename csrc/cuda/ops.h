#pragma once
#include <torch/extension.h>

namespace sassha {
// Adds the CUDA helpers that are not ops (the launcher's plans) to the extension module.
void register_cuda_helpers(pybind11::module_& m);
}  // namespace sassha
