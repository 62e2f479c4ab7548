#pragma once
#include <torch/extension.h>

#include "build_namespace.h"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
// Adds the CUDA helpers that are not ops (the launcher's plans) to the extension module
// (helpers.cpp).
void register_cuda_helpers(pybind11::module_& m);
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
