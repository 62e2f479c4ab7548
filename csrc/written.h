// The kernels write through raw pointers, which autograd does not see. Bumping the version
// counters of the tensors an op writes, as a native in-place op does, lets autograd refuse a
// backward through values the op overwrote. (The dispatcher's in-place fallback does not bump
// the tensor lists these ops write.)
#pragma once
#include <ATen/ATen.h>

namespace sassha {

inline void mark_written(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace sassha
