#pragma once
#include <torch/extension.h>

namespace sassha {
// Adds the CPU helpers that are not ops (the kernels' instruction set) to the extension module.
void register_cpu_helpers(pybind11::module_& m);
}  // namespace sassha
