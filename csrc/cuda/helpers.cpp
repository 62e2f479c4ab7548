// The CUDA part's helpers that are not ops, in sassha_fast._C: the launcher's plans, for
// inspection (tests/backends/test_backend_cuda.py), and the argument layout in use. CUDA build
// only: the host emulation has no module of its own.
#include <array>
#include <cstdint>
#include <vector>

#include "launch_plan.h"
#include "ops.h"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace {

namespace py = pybind11;

// The launcher's plan for tensors of these sizes over Depth lists with ArgBytes of kernel
// arguments. Tensor t of list d gets the fake address t * Depth + d + 1, which the plan's
// address tables are decoded from.
template <int Depth, int ArgBytes>
py::dict launch_plan(const std::vector<int64_t>& numels) {
  using Args = cuda::LaunchArgs<Depth, ArgBytes>;
  std::vector<std::array<void*, Depth>> addresses(numels.size());
  for (size_t t = 0; t < numels.size(); ++t) {
    for (int d = 0; d < Depth; ++d) {
      addresses[t][d] = reinterpret_cast<void*>(static_cast<uintptr_t>(t * Depth + d + 1));
    }
  }
  py::list launches;
  cuda::plan_launches<Depth, ArgBytes>(
      addresses, numels, [&](const Args& args, int blocks) {
        py::list block_list;
        for (int b = 0; b < blocks; ++b) {
          const int slot = args.block_tensor[b];
          py::list tensor_of_list;
          for (int d = 0; d < Depth; ++d) {
            const auto code = reinterpret_cast<uintptr_t>(args.address[d][slot]);
            tensor_of_list.append(code == 0 ? -1 : static_cast<int64_t>((code - 1) / Depth));
          }
          block_list.append(py::dict(py::arg("slot") = slot, py::arg("tensors") = tensor_of_list,
                                     py::arg("chunk") = args.block_chunk[b],
                                     py::arg("numel") = args.numel[slot]));
        }
        launches.append(py::dict(py::arg("first_block") = args.first_block,
                                 py::arg("blocks") = block_list));
      });
  return py::dict(py::arg("chunk") = cuda::kChunk, py::arg("max_blocks") = Args::kMaxBlocks,
                  py::arg("max_tensors") = Args::kMaxTensors,
                  py::arg("args_bytes") = sizeof(Args), py::arg("launches") = launches);
}

template <int ArgBytes>
py::dict launch_plan_for_depth(const std::vector<int64_t>& numels, int depth) {
  switch (depth) {
    case 1: return launch_plan<1, ArgBytes>(numels);
    case 2: return launch_plan<2, ArgBytes>(numels);
    case 4: return launch_plan<4, ArgBytes>(numels);
    case 5: return launch_plan<5, ArgBytes>(numels);
    default: TORCH_CHECK(false, "cuda_launch_plan: the ops use 1, 2, 4 or 5 lists, not ", depth);
  }
}

py::dict launch_plan_op(const std::vector<int64_t>& numels, int depth, int arg_bytes) {
  if (arg_bytes == cuda::kLargeArgBytes) return launch_plan_for_depth<cuda::kLargeArgBytes>(numels, depth);
  TORCH_CHECK(arg_bytes == cuda::kSmallArgBytes, "cuda_launch_plan: arg_bytes is ",
              cuda::kSmallArgBytes, " or ", cuda::kLargeArgBytes, ", not ", arg_bytes);
  return launch_plan_for_depth<cuda::kSmallArgBytes>(numels, depth);
}

}  // namespace

void register_cuda_helpers(py::module_& m) {
  using py::arg;
  // The GIL stays held: the plan is built into Python objects.
  m.def("cuda_launch_plan", &launch_plan_op, arg("numels"), arg("depth"),
        arg("arg_bytes") = cuda::kSmallArgBytes,
        "How the multi-tensor launcher would cut tensors of these sizes into launches with "
        "4096 or 32764 bytes of kernel arguments");
  m.def("cuda_kernel_arg_bytes", &cuda::kernel_arg_bytes,
        "Bytes of kernel arguments the launches use here: 32764 with a CUDA 12.1+ toolkit and "
        "driver, else 4096");
}

}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
