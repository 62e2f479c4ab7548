#pragma once
#include <torch/extension.h>

namespace sassha {
// Adds the CPU ops to the extension module.
void register_cpu_ops(pybind11::module_& m);
}  // namespace sassha
