// A per-step scalar (learning rate, bias corrections, perturbation scale, norm factor) that
// is either a host value or the address of a one-element fp32 tensor on the device, which the
// kernels read when they run. With the latter, a step recorded in a CUDA graph can be
// replayed with new values without recapturing, and a value computed on the device (a norm)
// never travels to the host.
#pragma once

#include "build_namespace.h"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {

struct DeviceScalar {
  const float* ptr;  // nullptr: use value
  float value;
};

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
